"""Frame stacking: n consecutive encoder frames (40 ms, or 80 ms with x8 subsampling) become one (stride = frame x n)."""

from __future__ import annotations

import torch
from torch import nn

ENCODER_FRAME_MS = 40  # the default conv subsampling, x4 over 10 ms fbank frames


class FrameStacker(nn.Module):
    """[B, T, D] -> [B, ceil(T/n), n*D]; the tail is zero-padded so no audio is dropped."""

    def __init__(self, stride_ms: int, frame_ms: int = ENCODER_FRAME_MS) -> None:
        super().__init__()
        if stride_ms % frame_ms or stride_ms < frame_ms:
            raise ValueError(f"stride_ms={stride_ms} must be a positive multiple of {frame_ms} ms")
        self.n = stride_ms // frame_ms

    def output_dim(self, input_dim: int) -> int:
        return input_dim * self.n

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + self.n - 1, self.n, rounding_mode="floor")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        # zero every frame past each sequence's length so padding never leaks into a stacked frame
        mask = torch.arange(t, device=x.device)[None, :] < lengths[:, None]  # [B, T]
        x = x * mask[..., None].to(x.dtype)
        pad = (-t) % self.n
        if pad:
            x = nn.functional.pad(x, (0, 0, 0, pad))  # [B, T + pad, D]
        x = x.reshape(b, (t + pad) // self.n, self.n * d)  # [B, T', n*D]
        return x, self.output_lengths(lengths)
