"""A tiny deterministic regression task over synthetic cuts, to test the trainer without data."""

from __future__ import annotations

import os
import signal
import zlib

import torch
from lhotse import CutSet
from lhotse.cut import MonoCut


def toy_cuts(n: int, prefix: str) -> CutSet:
    """Cuts without audio: only ids and durations (1-4 s) matter to the sampler and the task."""
    return CutSet.from_cuts(
        MonoCut(id=f"{prefix}{i:03d}", start=0, duration=1.0 + (i % 7) * 0.5, channel=0) for i in range(n)
    )


class ToyTask:
    """y = sum(x) regression; inputs derived from the cut id so every process sees the same data."""

    def __init__(self, dropout: float = 0.1, crash_at_step: int | None = None, sigterm_at_step: int | None = None):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(dropout), torch.nn.Linear(16, 1))
        self.crash_at_step, self.sigterm_at_step = crash_at_step, sigterm_at_step

    def collate(self, cuts: CutSet) -> tuple[torch.Tensor, torch.Tensor]:
        gens = [torch.Generator().manual_seed(zlib.crc32(c.id.encode())) for c in cuts]
        x = torch.stack([torch.randn(8, generator=g) for g in gens])  # [B, 8]
        return x, x.sum(1, keepdim=True)

    def loss(self, model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean(), {"batch_size": float(len(x))}

    def on_step(self, step: int, model) -> None:
        if self.crash_at_step is not None and step == self.crash_at_step:
            raise KeyboardInterrupt(f"simulated kill before step {step}")
        if self.sigterm_at_step is not None and step == self.sigterm_at_step:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. a preempted pod; arrives mid-step
