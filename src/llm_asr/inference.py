"""Load a trained system (local dir or models:/ URI) as a Recognizer and transcribe audio.

A Recognizer turns a list of 16 kHz mono float32 waveforms into a list of texts:
`recognizer.transcribe(waves: list[np.ndarray]) -> list[str]`. The CTC baseline, the
speech-LLM and the Whisper peer system implement it, so evaluation and `transcribe` share
one path (serving builds the speech-LLM's recognizer directly, the same one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from llm_asr.config import Config
from llm_asr.errors import UserError
from llm_asr.paths import Paths


class Recognizer(Protocol):
    def transcribe(self, waves: list[np.ndarray]) -> list[str]: ...


def resolve_model_dir(model: str | Path | None, cfg: Config, paths: Paths, system: str) -> Path:
    """A local model directory for MODEL: a path, a models:/ URI (downloaded), or the default."""
    if model is None:
        model = f"models:/{cfg.tracking.registered_model}@champion"
    model = str(model)
    if model.startswith(("models:/", "runs:/")):
        from llm_asr import tracking

        return tracking.download_model_dir(cfg, paths, model)
    path = Path(model)
    if not path.is_absolute() and not path.exists():
        path = paths.workdir / path
    if not path.is_dir():
        raise UserError(f"model directory {model} does not exist: train it first or pass --model")
    return path


SYSTEMS = ("speech-llm", "ctc", "whisper")


def load_recognizer(cfg: Config, paths: Paths, system: str, model: str | Path | None = None) -> Recognizer:
    """`system`'s recognizer for MODEL; whisper: a faster-whisper dir or id (default: packaged Whisper base)."""
    if system == "whisper":
        from llm_asr.decoding.whisper import WhisperRecognizer

        return WhisperRecognizer.from_config(cfg.whisper, paths.cache, paths.workdir, model)
    if system not in SYSTEMS:
        raise UserError(f"unknown system '{system}': use one of {', '.join(SYSTEMS)}")
    model_dir = resolve_model_dir(model, cfg, paths, system)
    if system == "ctc":
        from llm_asr.decoding.ctc import CtcRecognizer

        return CtcRecognizer.from_dir(model_dir, lm_cfg=cfg.ctc.lm)
    if system == "speech-llm":
        from llm_asr.decoding.speech_llm import SpeechLlmRecognizer

        return SpeechLlmRecognizer.from_dir(model_dir, cfg.decoding)
    raise AssertionError(system)


# ---- files of any length ---------------------------------------------------------------


def segment_bounds(n_samples: int, sample_rate: int, segment_s: float, overlap_s: float) -> list[tuple[int, int]]:
    """[start, end) sample windows of `segment_s` that overlap by `overlap_s`; one if it fits."""
    seg, hop = int(segment_s * sample_rate), int((segment_s - overlap_s) * sample_rate)
    if n_samples <= seg:
        return [(0, n_samples)]
    if hop <= 0:
        raise UserError(f"decoding.overlap_s ({overlap_s}) must be shorter than decoding.segment_s ({segment_s})")
    starts = list(range(0, n_samples - seg, hop)) + [max(0, n_samples - seg)]
    return [(s, min(n_samples, s + seg)) for s in dict.fromkeys(starts)]


def stitch_words(left: list[str], right: list[str], overlap_words: int) -> list[str]:
    """Join two transcripts whose audio overlapped: align the end of `left` with the start of
    `right` on equal words; without a convincing match, split the expected overlap evenly."""
    best_len, best_hits = 0, 0
    for n in range(1, min(len(left), len(right), 2 * overlap_words + 2) + 1):
        hits = sum(a == b for a, b in zip(left[-n:], right[:n]))
        if hits > best_hits or (hits == best_hits and hits and n < best_len):
            best_len, best_hits = n, hits
    if best_hits and best_hits * 2 >= best_len:
        return left + right[best_len:]
    keep_left = len(left) - overlap_words // 2
    return left[:keep_left] + right[overlap_words - overlap_words // 2 :]


def transcribe_long(recognizer: Recognizer, wave: np.ndarray, dcfg, sample_rate: int = 16000) -> str:
    """Transcribe audio of any length in memory-bounded windows (decoding.segment_s with
    decoding.overlap_s), decoded `decoding.batch_size` windows at a time, then stitched."""
    bounds = segment_bounds(len(wave), sample_rate, dcfg.segment_s, dcfg.overlap_s)
    texts: list[str] = []
    for i in range(0, len(bounds), dcfg.batch_size):
        texts += recognizer.transcribe([wave[s:e] for s, e in bounds[i : i + dcfg.batch_size]])
    words = texts[0].split()
    for (s, e), text in zip(bounds[1:], texts[1:]):
        nxt = text.split()
        overlap_s = max(0.0, (bounds[bounds.index((s, e)) - 1][1] - s) / sample_rate)
        rate = len(nxt) / max((e - s) / sample_rate, 1e-3)  # words per second in this window
        words = stitch_words(words, nxt, int(round(rate * overlap_s)))
    return " ".join(words)


def transcribe_files(cfg: Config, paths: Paths, files: list[str], model: str | Path | None = None,
                     system: str | None = None):
    """Yield {"audio": path, "text": ...} per file ({"audio": path, "error": why} for unreadable
    audio); without `system`, speech-LLM or CTC is read from the model directory. Files of any
    length: see `transcribe_long`."""
    from llm_asr.data.audio import SAMPLE_RATE, load_audio
    from llm_asr.models.speech_llm_dir import is_speech_llm_dir

    if system == "whisper":
        recognizer = load_recognizer(cfg, paths, system, model)
    else:
        model_dir = resolve_model_dir(model, cfg, paths, system or "speech-llm")
        system = system or ("speech-llm" if is_speech_llm_dir(model_dir) else "ctc")
        recognizer = load_recognizer(cfg, paths, system, model_dir)
    for path in files:
        try:
            wave = load_audio(path)
        except UserError as e:  # BadAudio: reported for this file, the others are still transcribed
            yield {"audio": path, "error": str(e)}
            continue
        yield {"audio": path, "text": transcribe_long(recognizer, wave, cfg.decoding, SAMPLE_RATE)}
