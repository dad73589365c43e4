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


def warmup_cosine(warmup_steps: int, max_steps: int, final_ratio: float = 0.05) -> Callable[[int], float]:
    """lr multiplier: linear warmup to 1, then cosine decay to `final_ratio` at max_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure_bf16_speedup(step_fn: Callable[[str], None], reps: int = 2) -> float:
    """fp32 time / bf16 time of `step_fn(precision)` (one forward+backward), after a warm-up each."""
    times = {}
    for precision in ("fp32", "bf16"):
        step_fn(precision)  # warm-up (kernel selection, allocator)
        t0 = time.perf_counter()
        for _ in range(reps):
            step_fn(precision)
        times[precision] = (time.perf_counter() - t0) / reps
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
