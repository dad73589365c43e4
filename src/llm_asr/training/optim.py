"""AdamW parameter groups, the warmup + cosine schedule, and the mixed-precision choice."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

import torch


def default_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable weights (>= 2-d) decay; biases and norms do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosine:
    """lr multiplier: linear warmup to 1, then cosine decay to `final_ratio`.

    Progress is step / max_steps, or, when the trainer sets `time_fraction` (a wall-clock
    budget with tcfg.decay_by_time), whichever of the two is further along, so a run cut
    by its time budget still ends with a decayed learning rate. A callable object rather
    than a closure, so LambdaLR saves `time_fraction` in its state_dict.
    """

    def __init__(self, warmup_steps: int, max_steps: int, final_ratio: float = 0.05):
        self.warmup_steps, self.max_steps, self.final_ratio = warmup_steps, max_steps, final_ratio
        self.time_fraction = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, max(progress, self.time_fraction))
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(warmup_steps: int, max_steps: int, final_ratio: float = 0.05) -> WarmupCosine:
    return WarmupCosine(warmup_steps, max_steps, final_ratio)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure_bf16_speedup(step_fn: Callable[[str], None], reps: int = 3) -> float:
    """fp32 time / bf16 time of `step_fn(precision)` (one forward+backward), after a warm-up each."""
    times = {}
    for precision in ("fp32", "bf16"):
        step_fn(precision)  # warm-up (kernel selection, allocator)
        best = float("inf")
        for _ in range(reps):  # the fastest repetition: the CPU is shared, the minimum is the least noisy
            t0 = time.perf_counter()
            step_fn(precision)
            best = min(best, time.perf_counter() - t0)
        times[precision] = best
    return times["fp32"] / max(times["bf16"], 1e-9)


def resolve_precision(requested: str, device: torch.device, probe: Callable[[], float] | None) -> tuple[str, float]:
    """(precision, measured speedup or 0). auto: bf16 on GPUs that support it; on CPU only if
    the probe measures bf16 autocast at least 1.2x faster than fp32 for this model and batch."""
    if requested != "auto":
        return requested, 0.0
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), 0.0
    if probe is None:
        return "fp32", 0.0
    speedup = probe()
    return ("bf16" if speedup >= 1.2 else "fp32"), speedup
