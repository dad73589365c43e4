"""tools/asterisk_dev.py: Asterisk prompt recordings + their texts -> an MLS-layout real-speech dev set."""

import importlib.util
from pathlib import Path

import numpy as np
import soundfile as sf

from llm_asr.data.mls import read_mls_dir

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("asterisk_dev", ROOT / "tools" / "asterisk_dev.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prompt_texts_parse_comments_bom_and_first_definition() -> None:
    texts = _tool().parse_prompt_texts("\ufeff; Core Asterisk Sounds\n\nactivated: Activé.\nbad line\n"
                                       "activated: again\nempty:\nvm-press: Appuyez sur 1.\n")
    assert texts == {"activated": "Activé.", "vm-press": "Appuyez sur 1."}


def test_builds_a_dev_split_the_mls_reader_accepts_and_counts_every_drop(tmp_path) -> None:
    tool = _tool()
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    t = np.arange(8000 * 2) / 8000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(sounds / "agent-loginok.wav", tone, 8000)  # 8 kHz WAV, as the Italian package ships
    sf.write(sounds / "vm-press.wav", tone, 8000)  # its text has a digit: dropped
    sf.write(sounds / "no-text.wav", tone, 8000)
    (sounds / "broken.wav").write_bytes(b"RIFF....not audio")
    (sounds / "sub").mkdir()  # digits/, letters/: folders are not prompts
    texts = {"agent-loginok": "Vous êtes maintenant en ligne.", "vm-press": "Appuyez sur 1.",
             "broken": "Une phrase.", "never-recorded": "Rien."}
    counts = tool.build_language("french", sounds, texts, tmp_path / "out")
    assert counts == {"recordings": 4, "texts": 4, "no_text": 1, "no_recording": 1, "digits_or_symbols": 1,
                      "empty": 0, "unreadable": 1, "kept": 1, "seconds": 2.0}
    items, skipped = read_mls_dir(tmp_path / "out", "dev", None)
    assert skipped == [] and [(it.language, it.text) for it in items] == [("french", "vous êtes maintenant en ligne")]
    wave, sr = sf.read(items[0].audio_path)
    assert sr == 16000 and len(wave) == 32000


def test_raw_gsm_prompts_decode_at_16k(tmp_path) -> None:
    """The French and Spanish packages hold headerless GSM 06.10 at 8 kHz."""
    path = tmp_path / "prompt.gsm"
    t = np.arange(8000) / 8000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 8000, format="RAW", subtype="GSM610")
    wave = _tool().read_recording(path)
    assert wave.dtype == np.float32 and abs(len(wave) - 16000) <= 640 and float(np.abs(wave).max()) > 0.05
