"""SIGKILL the CTC and stage-two trainers at three points each, `--resume` after every kill: the
final weights and dev metrics equal the uninterrupted run's, bit for bit. A torn checkpoint is
rejected with a clear message; a full disk is a one-line error.

Kill points (one chain per stage): 1) as soon as the first checkpoint exists; 2) in a resumed
run, once it has checkpointed past half way; 3) in a resumed run, right after the final
checkpoint, while the stage writes its model and reports. Deterministic settings: fp32 (no bf16
probe), step-bounded schedule, fixed seed; the trainer restores model, optimizer, scheduler,
sampler position and RNG states.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_asr.config import load_config
from llm_asr.errors import UserError
from llm_asr.paths import Paths
from llm_asr.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.integration

STAGES = {
    "train-ctc": dict(
        sets=["ctc.train.precision=fp32", "ctc.train.max_steps=16", "ctc.train.checkpoint_every=2",
              "ctc.train.valid_every=5", "ctc.train.log_every=2"],
        out=lambda p: p.ctc_model, weights=["model.pt"], metrics=["dev_metrics.json"],
    ),
    "train-speech-llm": dict(
        sets=["speech_llm.train.precision=fp32", "speech_llm.train.max_steps=10",
              "speech_llm.train.checkpoint_every=2", "speech_llm.train.valid_every=3",
              "speech_llm.train.log_every=2"],
        out=lambda p: p.speech_llm_model, weights=["trained.pt", "adapter/adapter_model.safetensors"],
        metrics=[],
    ),
}


def _step(ckpt: Path) -> int:
    try:
        return load_checkpoint(ckpt)["state"]["step"]
    except (FileNotFoundError, UserError):
        return 0


def _cli(stage: str, work: Path, resume: bool) -> list[str]:
    sets = [a for s in STAGES[stage]["sets"] for a in ("--set", s)]
    return [sys.executable, "-m", "llm_asr.cli", stage, "--profile", "micro", "--workdir", str(work), *sets,
            *(["--resume"] if resume else [])]


def _run_until(cmd: list[str], ckpt: Path, at_least: int, env: dict) -> int:
    """Start CMD, SIGKILL it once the checkpoint reaches step AT_LEAST; returns the step killed at."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while _step(ckpt) < at_least and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    code = proc.wait()
    assert code == -signal.SIGKILL, f"the run ended on its own (exit {code}) before kill point {at_least}"
    return _step(ckpt)


def _workdir(root: Path, name: str, src: Paths, stage: str) -> Paths:
    p = Paths.at(root / name)
    (p.workdir / "models").mkdir(parents=True)
    (p.workdir / "data").symlink_to(src.workdir / "data", target_is_directory=True)
    if stage == "train-speech-llm":
        (p.workdir / "models" / "ctc").symlink_to(src.ctc_model, target_is_directory=True)
    return p


@pytest.mark.parametrize("stage", list(STAGES))
def test_three_kills_then_resume_match_the_uninterrupted_run(stage, micro_ctc, tmp_path):
    _, src, _ = micro_ctc
    spec = STAGES[stage]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    killed = _workdir(tmp_path, "killed", src, stage)
    ckpt = spec["out"](killed) / "checkpoints" / "checkpoint.pt"
    max_steps = int(spec["sets"][1].split("=")[1])
    points = [2, max_steps // 2 + 2, max_steps]
    steps = [_run_until(_cli(stage, killed.workdir, resume=i > 0), ckpt, at, env) for i, at in enumerate(points)]
    assert steps[0] < steps[1] < max_steps <= steps[2], steps
    done = subprocess.run(_cli(stage, killed.workdir, resume=True), capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"resumed": true' in done.stdout

    full = _workdir(tmp_path, "full", src, stage)  # uninterrupted, in this process (no start-up cost)
    module = importlib.import_module(f"llm_asr.stages.{stage.replace('-', '_')}")
    sets = [*spec["sets"], f"tracking.tracking_uri={env['MLFLOW_TRACKING_URI']}"]
    module.run(load_config("micro", sets), full)
    a, b = load_checkpoint(ckpt)["model"], load_checkpoint(spec["out"](full) / "checkpoints" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in spec["weights"] + spec["metrics"]:
        assert (spec["out"](killed) / name).read_bytes() == (spec["out"](full) / name).read_bytes(), name
    assert not list((spec["out"](killed) / "checkpoints").glob(".*.tmp"))  # no torn leftovers


def test_a_truncated_checkpoint_is_rejected_with_a_clear_message(micro_ctc, tmp_path):
    from llm_asr.stages import train_ctc

    cfg, src, _ = micro_ctc
    work = _workdir(tmp_path, "w", src, "train-ctc")
    (work.ctc_model / "checkpoints").mkdir(parents=True)
    data = (src.ctc_model / "checkpoints" / "checkpoint.pt").read_bytes()
    (work.ctc_model / "checkpoints" / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt checkpoint.*delete it"):
        train_ctc.run(load_config("micro", [f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]), work,
                      resume=True)


def test_a_full_disk_is_a_one_line_error(micro_ctc, tmp_path):
    """A real tiny tmpfs where we may mount one (root), else ENOSPC raised by the checkpoint writer."""
    import errno

    from typer.testing import CliRunner

    from llm_asr.cli import app

    _, src, _ = micro_ctc
    mnt = tmp_path / "full"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                                   capture_output=True).returncode == 0
    try:
        work = _workdir(mnt, "w", src, "train-ctc")
        args = ["train-ctc", "--profile", "micro", "--workdir", str(work.workdir),
                "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]
        if mounted:
            (mnt / "filler").write_bytes(b"\0" * (200 * 1024))
            res = subprocess.run([sys.executable, "-m", "llm_asr.cli", *args], capture_output=True, text=True,
                                 timeout=300)
            code, out = res.returncode, res.stderr
        else:
            def no_space(*a, **k):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(work.ctc_model / "checkpoint.pt"))

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(torch, "save", no_space)
                res = CliRunner().invoke(app, args)
            code, out = res.exit_code, res.output
        assert code == 2, out[-3000:]
        assert "disk full" in out and "Traceback" not in out, out[-3000:]
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
