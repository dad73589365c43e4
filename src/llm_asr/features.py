"""Log-mel features: THE one feature function (`compute_features`), used by extract-features and at inference.

`compute_features(wave, fcfg)` dispatches on `features.kind`:
- fbank: `compute_fbank`, Kaldi-compatible fbank (torchaudio.compliance.kaldi, edges not snipped) on
  16 kHz float audio in [-1, 1], with dither off so the same audio always gives the same features.
- whisper: `compute_whisper_mel`, Whisper's own log-mel (what its encoder was trained on), without the
  padding to 30 s.
Both give round(samples / 160) frames of 10 ms. `FbankExtractor` (and `WhisperMelExtractor`) wrap them as
lhotse `FeatureExtractor`s, so lhotse's feature storage and `cut.load_features()` work as usual. CMVN
stats are a JSON file {"mean": [...], "std": [...]}, computed over the train split for fbank, the identity
(mean 0, std 1) for whisper: Whisper's log-mel is normalised by its own fixed (x + 4) / 4, and the
pretrained encoder expects exactly that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lhotse.features.base import FeatureExtractor, register_extractor

from llm_asr.config import FeaturesConfig
from llm_asr.data.audio import SAMPLE_RATE
from llm_asr.errors import UserError

STD_FLOOR = 1e-5


def compute_fbank(wave: np.ndarray, fcfg: FeaturesConfig) -> np.ndarray:
    """float32 16 kHz mono samples [S] -> log-mel fbank [T, num_mel_bins] (float32)."""
    from torchaudio.compliance import kaldi

    samples = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(1, -1)  # [1, S]
    shift = int(SAMPLE_RATE * fcfg.frame_shift_ms / 1000)
    win = int(SAMPLE_RATE * fcfg.frame_length_ms / 1000)
    num_frames = (samples.shape[1] + shift // 2) // shift  # = lhotse.utils.compute_num_frames
    if samples.shape[1] < win:  # kaldi.fbank needs one whole window: zero-pad, then keep num_frames
        samples = torch.nn.functional.pad(samples, (0, win - samples.shape[1]))
    feats = kaldi.fbank(
        samples * 32768.0,  # Kaldi's int16 scale, so energies match Kaldi/lhotse recipes
        num_mel_bins=fcfg.num_mel_bins,
        frame_length=fcfg.frame_length_ms,
        frame_shift=fcfg.frame_shift_ms,
        dither=0.0,
        energy_floor=0.0,
        sample_frequency=SAMPLE_RATE,
        snip_edges=False,  # T = round(S / shift), what lhotse expects of a cut's duration
    )[:num_frames]  # [T, num_mel_bins]
    return feats.numpy().astype(np.float32, copy=False)


WHISPER_N_FFT, WHISPER_HOP = 400, 160  # Whisper's STFT: 25 ms Hann windows every 10 ms at 16 kHz


def compute_whisper_mel(wave: np.ndarray, fcfg: FeaturesConfig) -> np.ndarray:
    """float32 16 kHz mono samples [S] -> Whisper's log-mel [T, num_mel_bins] (float32), T = round(S / 160).

    What whisper.audio.log_mel_spectrogram, transformers' WhisperFeatureExtractor and faster-whisper's
    FeatureExtractor compute: |STFT|^2 (periodic Hann 400, hop 160, centred, reflect-padded) through the
    Slaney mel filterbank (0-8 kHz), log10 of it floored at 1e-10, clamped to 8 below the maximum, then
    (x + 4) / 4. Not padded to 30 s: the maximum is over this audio's own frames (the ones those extractors
    keep: they drop the last STFT frame), so the values are theirs frame for frame; one more frame is kept
    when S / 160 rounds up, so that T is what fbank and lhotse count for the same audio."""
    import torchaudio

    samples = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)  # [S]
    num_frames = (samples.shape[0] + WHISPER_HOP // 2) // WHISPER_HOP  # = compute_fbank's, lhotse's
    theirs = max(samples.shape[0] // WHISPER_HOP, 1)  # the frames Whisper's extractors keep (not the last)
    if num_frames == 0:
        return np.zeros((0, fcfg.num_mel_bins), np.float32)
    if samples.shape[0] <= WHISPER_N_FFT // 2:  # reflect padding needs more samples than it pads
        samples = torch.nn.functional.pad(samples, (0, WHISPER_N_FFT // 2 + 1 - samples.shape[0]))
    stft = torch.stft(samples, WHISPER_N_FFT, WHISPER_HOP, window=torch.hann_window(WHISPER_N_FFT),
                      center=True, pad_mode="reflect", return_complex=True)  # [201, S // 160 + 1]
    filters = torchaudio.functional.melscale_fbanks(
        WHISPER_N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, fcfg.num_mel_bins, SAMPLE_RATE, norm="slaney",
        mel_scale="slaney")  # [201, n_mels]
    mel = filters.T @ stft[:, :num_frames].abs().square()  # [n_mels, T]
    log_spec = mel.clamp_min(1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec[:, :theirs].max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T.contiguous().numpy().astype(np.float32, copy=False)  # [T, n_mels]


def compute_features(wave: np.ndarray, fcfg: FeaturesConfig) -> np.ndarray:
    """float32 16 kHz mono samples [S] -> features [T, num_mel_bins] of `features.kind` (see the module doc)."""
    if fcfg.kind == "whisper":
        return compute_whisper_mel(wave, fcfg)
    return compute_fbank(wave, fcfg)


def identity_cmvn(num_mel_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean 0, std 1): the CMVN of features.kind=whisper, whose log-mel is already normalised."""
    return np.zeros(num_mel_bins), np.ones(num_mel_bins)


@dataclass
class FbankExtractorConfig:
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0

    def features_config(self, kind: str = "fbank") -> FeaturesConfig:
        return FeaturesConfig(
            kind=kind,
            num_mel_bins=self.num_mel_bins,
            frame_length_ms=self.frame_length_ms,
            frame_shift_ms=self.frame_shift_ms,
        )


@register_extractor
class FbankExtractor(FeatureExtractor):
    """lhotse adapter around `compute_features` for its `kind` (so lhotse stores exactly what inference
    computes). `from_features_config` picks the class of `features.kind`."""

    name = "llm-asr-fbank"
    kind = "fbank"
    config_type = FbankExtractorConfig

    @classmethod
    def from_features_config(cls, fcfg: FeaturesConfig) -> FbankExtractor:
        kind_cls = WhisperMelExtractor if fcfg.kind == "whisper" else FbankExtractor
        return kind_cls(FbankExtractorConfig(fcfg.num_mel_bins, fcfg.frame_length_ms, fcfg.frame_shift_ms))

    def extract(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        if sampling_rate != SAMPLE_RATE:
            raise UserError(f"{self.kind} features expect {SAMPLE_RATE} Hz audio, got {sampling_rate} Hz")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == 2:  # lhotse passes [channels, samples]
            samples = samples.mean(axis=0)
        return compute_features(samples, self.config.features_config(self.kind))

    @property
    def frame_shift(self) -> float:
        return self.config.frame_shift_ms / 1000.0

    def feature_dim(self, sampling_rate: int) -> int:
        return self.config.num_mel_bins


@register_extractor
class WhisperMelExtractor(FbankExtractor):
    """lhotse adapter around `compute_whisper_mel` (features.kind=whisper)."""

    name = "llm-asr-whisper-mel"
    kind = "whisper"


class RunningStats:
    """Per-dimension mean/std accumulated over feature matrices (float64 sums)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sumsq = np.zeros(dim, dtype=np.float64)

    def update(self, feats: np.ndarray) -> None:
        f = feats.astype(np.float64)
        self.n += f.shape[0]
        self.sum += f.sum(axis=0)
        self.sumsq += (f * f).sum(axis=0)

    def merge(self, other: RunningStats) -> None:
        self.n += other.n
        self.sum += other.sum
        self.sumsq += other.sumsq

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            raise UserError("no feature frames to compute CMVN statistics from (is the train split empty?)")
        mean = self.sum / self.n
        var = np.maximum(self.sumsq / self.n - mean * mean, 0.0)
        return mean, np.maximum(np.sqrt(var), STD_FLOOR)


def save_cmvn(path: Path, mean: np.ndarray, std: np.ndarray, frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"mean": [float(x) for x in mean], "std": [float(x) for x in std], "frames": int(frames)}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def load_cmvn(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 arrays [num_mel_bins] from cmvn.json; normalize as (x - mean) / std."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no CMVN stats at {path}: run `llm-asr extract-features` first")
    data = json.loads(path.read_text())
    mean, std = np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32)
    if mean.shape != std.shape or mean.ndim != 1 or not (std > 0).all():
        raise UserError(f"{path}: malformed CMVN stats (mean/std must be equal-length, std > 0)")
    return mean, std
