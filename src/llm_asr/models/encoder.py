"""The audio encoder: conv subsampling x4 or x8 (40 or 80 ms frames) -> torchaudio Conformer, plus a CTC head.

`build_encoder(ecfg, num_mel_bins, augment)` gives `encoder(feats [B,T,F], lens [B]) ->
(out [B,T',D], out_lens [B])` with T' = ceil(T / 4) (x8: ceil(T / 8)); with ctc.encoder.source=whisper,
the pretrained Whisper encoder behind the same interface (models/whisper.py, 20 ms frames).
`CtcModel` = encoder + `ctc_head`
(a separate Linear, so stage two can reuse its log-probs). `CtcHead` may emit k outputs per frame
(`ctc.encoder.ctc_upsample`). `load_ctc_model(model_dir)`
loads a trained model directory strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import nn

from llm_asr.config import AugmentConfig, CtcConfig, EncoderConfig
from llm_asr.errors import UserError

WEIGHTS = "model.pt"


class Conv2dSubsampling(nn.Module):
    """3x3 stride-2 convs over (time, freq), two for x4 (40 ms frames) or three for x8 (80 ms):
    [B, T, F] -> [B, ceil(T/factor), D]."""

    def __init__(self, num_mel_bins: int, d_model: int, channels: int = 0, factor: int = 4):
        super().__init__()
        if factor not in (4, 8):
            raise ValueError(f"subsampling factor must be 4 or 8, not {factor}")
        c = channels or d_model
        self.num_convs = 2 if factor == 4 else 3
        self.conv1 = nn.Conv2d(1, c, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c, c, 3, stride=2, padding=1) if self.num_convs == 3 else None
        f_out = num_mel_bins
        for _ in range(self.num_convs):
            f_out = (f_out + 1) // 2
        self.out = nn.Linear(c * f_out, d_model)

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_convs):
            lens = (lens + 1) // 2  # ceil(T/2) per stride-2 conv
        return lens

    @staticmethod
    def _zero_padding(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Zero the padded frames so a batched utterance sees what it would see alone."""
        return x * (torch.arange(x.shape[2], device=x.device)[None, :] < lens[:, None])[:, None, :, None]

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.conv1(x.unsqueeze(1)))  # [B, C, ceil(T/2), ceil(F/2)]
        cur = (lens + 1) // 2
        for conv in (self.conv2, self.conv3):
            if conv is None:
                break
            x = torch.relu(conv(self._zero_padding(x, cur)))
            cur = (cur + 1) // 2
        b, c, t, f = x.shape
        x = self.out(x.permute(0, 2, 1, 3).reshape(b, t, c * f))  # [B, T', D]
        return x, cur


class SpecAugment(nn.Module):
    """Frequency and time masks (per utterance), only in training mode."""

    def __init__(self, acfg: AugmentConfig):
        super().__init__()
        self.acfg = acfg

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        a = self.acfg
        if not self.training:
            return feats
        x = feats.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        for _ in range(a.freq_masks):
            x = torchaudio.functional.mask_along_axis_iid(x, a.freq_mask_width, 0.0, axis=2)
        width = int(a.time_mask_ratio * x.shape[-1])
        for _ in range(a.time_masks if width >= 1 else 0):
            x = torchaudio.functional.mask_along_axis_iid(x, width, 0.0, axis=3)
        return x.squeeze(1).transpose(1, 2)  # [B, T, F]


class ConformerEncoder(nn.Module):
    def __init__(self, ecfg: EncoderConfig, num_mel_bins: int, augment: AugmentConfig | None = None):
        super().__init__()
        self.specaugment = SpecAugment(augment) if augment is not None and augment.specaugment else None
        self.subsampling = Conv2dSubsampling(num_mel_bins, ecfg.d_model, ecfg.subsampling_channels, ecfg.subsampling)
        self.dropout = nn.Dropout(ecfg.dropout)
        self.conformer = torchaudio.models.Conformer(
            input_dim=ecfg.d_model,
            num_heads=ecfg.num_heads,
            ffn_dim=ecfg.ffn_dim,
            num_layers=ecfg.num_layers,
            depthwise_conv_kernel_size=ecfg.kernel_size,
            dropout=ecfg.dropout,
        )
        self.output_dim = ecfg.d_model
        self.frame_ms = 10 * ecfg.subsampling  # over 10 ms fbank frames
        self._valid: torch.Tensor | None = None  # [B, 1, T'] while forward runs
        for layer in self.conformer.conformer_layers:
            layer.conv_module.sequential[2].register_forward_pre_hook(self._mask_padding)

    def _mask_padding(self, _module: nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        """Zero padded frames before each depthwise conv, so they never leak into real frames:
        a batched utterance is encoded as it would be alone (torchaudio does not mask there)."""
        return (args[0] * self._valid.to(args[0].dtype),) if self._valid is not None else args

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return self.subsampling.output_lengths(lens)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.specaugment is not None:
            feats = self.specaugment(feats)
        x, out_lens = self.subsampling(feats, lens)  # [B, T', D]
        self._valid = (torch.arange(x.shape[1], device=x.device)[None, :] < out_lens[:, None])[:, None, :]
        try:
            x, out_lens = self.conformer(self.dropout(x), out_lens)  # [B, T', D]
        finally:
            self._valid = None
        return x, out_lens


class CtcHead(nn.Linear):
    """Encoder frames [B, T, D] -> CTC logits [B, T*upsample, V].

    With `upsample` k > 1 each 40 ms frame emits k CTC outputs (one Linear to k*V, reshaped):
    CTC needs at least one output per token plus a blank between repeats, and characters
    come faster than 40 ms frames in French or English spelling (median 1.37 frames per
    character on the default French data), so a x1 head must drop letters there. The encoder
    and its cost stay at 40 ms; only the output layer grows.
    """

    def __init__(self, in_dim: int, num_classes: int, upsample: int = 1):
        super().__init__(in_dim, num_classes * upsample)
        self.num_classes, self.upsample = num_classes, upsample

    def output_lengths(self, enc_lens: torch.Tensor) -> torch.Tensor:
        return enc_lens * self.upsample

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        b, t, _ = enc.shape
        return super().forward(enc).reshape(b, t * self.upsample, self.num_classes)


class CtcModel(nn.Module):
    """forward(feats, lens) -> (logits [B, T'*k, V], out_lens); V includes the blank (class 0)."""

    def __init__(self, encoder: nn.Module, num_classes: int, upsample: int = 1):
        super().__init__()
        self.encoder = encoder
        self.ctc_head = CtcHead(encoder.output_dim, num_classes, upsample)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc, out_lens = self.encoder(feats, lens)
        return self.ctc_head(enc), self.ctc_head.output_lengths(out_lens)


def build_encoder(ecfg: EncoderConfig, num_mel_bins: int, augment: AugmentConfig | None = None,
                  model_dir: Path | None = None) -> nn.Module:
    """The encoder of `ctc.encoder.source`. `model_dir`: a trained model directory whose state dict the
    caller loads next; a pretrained encoder is then built to the shape saved there (`encoder_files`),
    without reading its pretrained weights."""
    if ecfg.source == "whisper":
        from llm_asr.models.whisper import build_whisper_encoder

        return build_whisper_encoder(ecfg.whisper, num_mel_bins, augment, model_dir)
    return ConformerEncoder(ecfg, num_mel_bins, augment)


def encoder_files(ecfg: EncoderConfig) -> tuple[str, ...]:
    """The files besides the state dict that a model directory needs to rebuild its encoder."""
    from llm_asr.models.whisper import ARCHITECTURE

    return (ARCHITECTURE,) if ecfg.source == "whisper" else ()


def save_encoder_files(encoder: nn.Module, folder: Path) -> None:
    """Write `encoder_files` into a model directory (nothing for the conformer: its config says it all)."""
    from llm_asr.models.whisper import WhisperEncoderAdapter

    if isinstance(encoder, WhisperEncoderAdapter):
        encoder.save_architecture(folder)


def build_ctc_model(ccfg: CtcConfig, num_mel_bins: int, num_classes: int, train: bool = True,
                    model_dir: Path | None = None) -> CtcModel:
    """The CTC model; SpecAugment only when built for training; `model_dir` as for `build_encoder`."""
    encoder = build_encoder(ccfg.encoder, num_mel_bins, ccfg.augment if train else None, model_dir)
    return CtcModel(encoder, num_classes, ccfg.encoder.ctc_upsample)


def load_ctc_model(model_dir: str | Path) -> tuple[CtcModel, Any, dict[str, Any]]:
    """(model in eval mode, CtcTokenizer, full config dict) from a `train-ctc` model directory."""
    from llm_asr.config import Config
    from llm_asr.models.tokenizer import CtcTokenizer
    from llm_asr.training.checkpoint import load_state_strict

    model_dir = Path(model_dir)
    for name in (WEIGHTS, "config.json", "tokenizer.model", "cmvn.json"):
        if not (model_dir / name).is_file():
            raise UserError(f"{model_dir} is not a CTC model directory (no {name}): run `llm-asr train-ctc`")
    cfg_dict = json.loads((model_dir / "config.json").read_text())
    cfg = Config.model_validate(cfg_dict)
    tokenizer = CtcTokenizer(model_dir / "tokenizer.model")
    model = build_ctc_model(cfg.ctc, cfg.features.num_mel_bins, tokenizer.num_classes, train=False,
                            model_dir=model_dir)
    load_state_strict(model, torch.load(model_dir / WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval(), tokenizer, cfg_dict
