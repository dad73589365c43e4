"""Duration-bucketed batches (lhotse DynamicBucketingSampler) and padded, CMVN-normalized features."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler


def make_sampler(
    cuts: CutSet,
    *,
    max_duration_s: float,
    num_buckets: int,
    shuffle: bool,
    seed: int,
    world_size: int = 1,
    rank: int = 0,
) -> DynamicBucketingSampler:
    """Batches of at most `max_duration_s` seconds of audio, drawn from length buckets.

    Under data parallelism each rank gets every world_size-th batch (lhotse's scheme),
    so one optimizer step sees world_size * grad_accum batches in total. Buckets are not
    synced across ranks (`sync_buckets=False`): every rank draws the same batch sequence
    from the same seed, so W ranks x grad_accum A see exactly the batches that one process
    with grad_accum W*A sees (tested), at the cost of ranks mixing lengths within a step.
    """
    longest = max((c.duration for c in cuts), default=0.0)
    if longest > max_duration_s:
        # lhotse would silently emit a batch over the limit; make the setting visible instead
        max_duration_s = longest
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")  # small sets: eager is fine
        return DynamicBucketingSampler(
            cuts,
            max_duration=max_duration_s,
            num_buckets=max(2, min(num_buckets, len(cuts) // 2)),
            sync_buckets=False,
            shuffle=shuffle,
            drop_last=False,
            seed=seed,
            world_size=world_size,
            rank=rank,
            buffer_size=max(20000, len(cuts) + 1),
        )


def make_eval_sampler(cuts: CutSet, max_duration_s: float) -> SimpleCutSampler:
    """Fixed order (longest first, so padding is small), every cut exactly once."""
    longest = max((c.duration for c in cuts), default=0.0)
    return SimpleCutSampler(cuts.sort_by_duration(ascending=False), max_duration=max(max_duration_s, longest))


def cuts_duration(cuts: CutSet) -> float:
    return float(sum(c.duration for c in cuts))


def pad_features(mats: list[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of [T_i, F] -> (feats [B, T_max, F] zero-padded, lens [B])."""
    tensors = [torch.as_tensor(m, dtype=torch.float32) for m in mats]
    lens = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    feats = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)  # [B, T_max, F]
    return feats, lens


Cmvn = tuple[np.ndarray, np.ndarray]  # (mean, std) [F], from llm_asr.features.load_cmvn


def apply_cmvn(feats: torch.Tensor, lens: torch.Tensor, cmvn: Cmvn | None) -> torch.Tensor:
    """Global mean/variance normalization; padded frames stay exactly zero."""
    if cmvn is None:
        return feats
    mean = torch.as_tensor(cmvn[0], dtype=feats.dtype)
    std = torch.as_tensor(cmvn[1], dtype=feats.dtype)
    out = (feats - mean) / std
    mask = torch.arange(feats.shape[1])[None, :] < lens[:, None]  # [B, T]
    return out * mask[..., None]


def collate_features(cuts: CutSet, cmvn: Cmvn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load each cut's precomputed fbank -> (feats [B, T, F] normalized, lens [B])."""
    feats, lens = pad_features([c.load_features() for c in cuts])
    return apply_cmvn(feats, lens, cmvn), lens
