"""Reading audio safely: 16 kHz mono float32, or a `BadAudio` error that says what is wrong.

Two policies, one per use:
- `load_audio` / `load_audio_bytes` (inference: `transcribe`, the served model) are
  lenient about format: multi-channel audio is downmixed (channel mean) and any other
  sample rate is resampled to 16 kHz (polyphase, scipy).
- `read_corpus_audio` (corpus readers: `read_mls_dir`, prepare-data) is strict, as MLS
  is 16 kHz mono FLAC: another rate or channel count is a reason to skip the utterance.
Both reject empty, truncated, corrupt or non-audio files, NaN/inf samples and audio shorter
than one 25 ms analysis window (it gives no feature frame, and no model can read it).
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from llm_asr.errors import UserError

SAMPLE_RATE = 16000
MIN_SECONDS = 0.025  # one fbank analysis window


class BadAudio(UserError):
    """Audio that cannot be used; the message is the reason (shown in reports as-is)."""


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (e.g. espeak-ng's 22.05 kHz -> 16 kHz: up 320, down 441)."""
    if orig_sr == target_sr:
        return wave
    from scipy.signal import resample_poly

    ratio = Fraction(target_sr, orig_sr)
    out = resample_poly(wave, ratio.numerator, ratio.denominator, axis=0)
    return out.astype(np.float32, copy=False)


def _decode(source, name: str) -> tuple[np.ndarray, int]:
    """[frames, channels] float32 and the sample rate; BadAudio when unreadable."""
    try:
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise BadAudio(f"corrupt or not audio: {name} ({getattr(e, 'error_string', e)})") from None
    with f:
        expected, sr = f.frames, f.samplerate
        try:
            data = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:  # the header was fine, the data is not
            raise BadAudio(
                f"truncated or damaged audio data: {name} ({getattr(e, 'error_string', e)})"
            ) from None
    if data.shape[0] == 0:
        raise BadAudio(f"empty audio (no samples): {name}")
    if 0 < expected != data.shape[0]:
        raise BadAudio(f"truncated audio: {name} ({data.shape[0]} of {expected} samples)")
    if not np.isfinite(data).all():
        raise BadAudio(f"NaN or inf samples: {name}")
    return data, sr


def _long_enough(wave: np.ndarray, sr: int, name: str) -> np.ndarray:
    if wave.shape[0] < MIN_SECONDS * sr:
        ms = wave.shape[0] / sr * 1000
        raise BadAudio(f"too short: {name} ({ms:.1f} ms, need >= {MIN_SECONDS * 1000:g} ms)")
    return wave


def _mono_16k(data: np.ndarray, sr: int) -> np.ndarray:
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(resample(wave.astype(np.float32, copy=False), sr))


def load_audio(path: str | Path) -> np.ndarray:
    """Any readable audio file -> float32 mono 16 kHz (downmixed / resampled as needed)."""
    path = Path(path)
    if not path.is_file():
        raise BadAudio(f"no such audio file: {path}")
    if path.stat().st_size == 0:
        raise BadAudio(f"empty file: {path}")
    return _long_enough(_mono_16k(*_decode(str(path), str(path))), SAMPLE_RATE, str(path))


def load_audio_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded audio (WAV, FLAC, OGG, ...) in memory -> float32 mono 16 kHz."""
    if not data:
        raise BadAudio(f"empty audio payload: {name}")
    return _long_enough(_mono_16k(*_decode(io.BytesIO(data), name)), SAMPLE_RATE, name)


def read_corpus_audio(path: str | Path) -> np.ndarray:
    """Strict corpus read: must already be 16 kHz mono; returns float32 [samples]."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadAudio("empty file")
    data, sr = _decode(str(path), path.name)
    if sr != SAMPLE_RATE:
        raise BadAudio(f"wrong sample rate {sr} Hz (expected {SAMPLE_RATE})")
    if data.shape[1] != 1:
        raise BadAudio(f"{data.shape[1]} channels (expected mono)")
    return _long_enough(data[:, 0], sr, path.name)
