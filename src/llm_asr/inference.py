"""Load a trained system (local dir or models:/ URI) as a Recognizer and transcribe audio.

A Recognizer turns a list of 16 kHz mono float32 waveforms into a list of texts:
`recognizer.transcribe(waves: list[np.ndarray]) -> list[str]`. The CTC baseline and
the speech-LLM both implement it, so evaluation, `transcribe` and serving share one path.
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


def load_recognizer(cfg: Config, paths: Paths, system: str, model: str | Path | None = None) -> Recognizer:
    model_dir = resolve_model_dir(model, cfg, paths, system)
    if system == "ctc":
        from llm_asr.decoding.ctc import CtcRecognizer

        return CtcRecognizer.from_dir(model_dir)
    if system == "speech-llm":
        from llm_asr.decoding.speech_llm import SpeechLlmRecognizer

        return SpeechLlmRecognizer.from_dir(model_dir, cfg.decoding)
    raise UserError(f"unknown system '{system}': use 'speech-llm' or 'ctc'")
