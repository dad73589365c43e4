"""Trainer: atomic checkpoints, exact resume after a crash, schedule, validation selection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from llm_asr.config import TrainConfig
from llm_asr.training import train
from llm_asr.training.checkpoint import atomic_save, load_checkpoint
from llm_asr.training.optim import warmup_cosine
from tests.ctc.toy_task import ToyTask, toy_cuts

TCFG = TrainConfig(max_duration_s=10, max_steps=20, warmup_steps=2, valid_every=5, checkpoint_every=3,
                   log_every=2, precision="fp32")


def _last_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["model"]


def test_atomic_save_leaves_old_file_when_write_fails(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"a": Unpicklable()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_warmup_cosine_shape():
    f = warmup_cosine(10, 110, final_ratio=0.05)
    assert f(60) == pytest.approx(0.525)
    f.time_fraction = 1.0  # a wall-clock budget used up: fully decayed whatever the step
    assert f(20) == pytest.approx(0.05)
    f.time_fraction = 0.0
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.525) and f(110) == pytest.approx(0.05) and f(500) == pytest.approx(0.05)


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    """Crash before step 8 (last checkpoint: step 6), resume: the final weights are bit-identical
    (tolerance 0: fp32 on CPU is deterministic; dropout, sampler shuffling and RNG all restored)."""
    full = ToyTask()
    summary = train(full, toy_cuts(40, "t"), toy_cuts(8, "v"), TCFG, tmp_path / "a", seed=3)
    assert summary["steps"] == 20 and summary["stopped_by"] == "max_steps"

    with pytest.raises(KeyboardInterrupt):
        train(ToyTask(crash_at_step=8), toy_cuts(40, "t"), toy_cuts(8, "v"), TCFG, tmp_path / "b", seed=3)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["state"]["step"] == 6
    resumed = train(ToyTask(), toy_cuts(40, "t"), toy_cuts(8, "v"), TCFG, tmp_path / "b", seed=3, resume=True)
    assert resumed["resumed"] and resumed["steps"] == 20

    a, b = _last_weights(tmp_path / "a"), _last_weights(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the run crossed epochs (40 cuts of ~2.5 s in batches of <= 10 s): the sampler state mattered
    assert summary["best_step"] > 0 and (tmp_path / "a" / "curves.png").exists()


def test_sigterm_checkpoints_the_current_step_then_resume_matches(tmp_path):
    """SIGTERM mid-step 9: the step finishes, checkpoint.pt holds step 10, exit status 143."""
    full = ToyTask()
    train(full, toy_cuts(40, "t"), toy_cuts(8, "v"), TCFG, tmp_path / "a", seed=3)
    with pytest.raises(SystemExit) as exc:
        train(ToyTask(sigterm_at_step=9), toy_cuts(40, "t"), toy_cuts(8, "v"), TCFG, tmp_path / "b", seed=3)
    assert exc.value.code == 143
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["state"]["step"] == 10
    train(ToyTask(), toy_cuts(40, "t"), toy_cuts(8, "v"), TCFG, tmp_path / "b", seed=3, resume=True)
    a, b = _last_weights(tmp_path / "a"), _last_weights(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_without_resume_different_seed_differs(tmp_path):
    """Guards the test above against passing trivially (e.g. weights not training)."""
    train(ToyTask(), toy_cuts(40, "t"), toy_cuts(8, "v"), TCFG, tmp_path / "a", seed=3)
    train(ToyTask(), toy_cuts(40, "t"), toy_cuts(8, "v"), TCFG, tmp_path / "b", seed=4)
    a, b = _last_weights(tmp_path / "a"), _last_weights(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_wall_clock_cap_stops_and_checkpoints(tmp_path):
    tcfg = TCFG.model_copy(update={"max_steps": 100000, "max_minutes": 0.02})
    s = train(ToyTask(), toy_cuts(40, "t"), toy_cuts(8, "v"), tcfg, tmp_path, seed=0)
    assert s["stopped_by"] == "time_budget" and s["steps"] < 100000
    assert load_checkpoint(tmp_path / "checkpoint.pt")["state"]["step"] == s["steps"]
    assert os.path.exists(tmp_path / "best.pt")
