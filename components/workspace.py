"""Run one stage inside a KFP task: artifact dirs laid out as a workdir, then `stages.<stage>.run`.

A stage reads and writes fixed places under a workdir (`llm_asr.paths.Paths`); a KFP
task gets one local directory per input and output artifact. `task_workdir` makes a
fresh per-task workdir whose sub-trees (`data/features`, `models/ctc`, ...) are symlinks
to those artifact directories, so the stage writes straight into its output artifacts
and reads its inputs where KFP put them, with nothing copied. The same code runs under
`kfp.local` (artifacts under the local pipeline root) and on a cluster (artifacts staged
by the KFP launcher from the object store).

This module is imported inside lightweight components, so it must be importable in the
project image (`infra/Dockerfile` puts the repo root on PYTHONPATH) and locally (the
repo root is the working directory of `kfp.local` subprocesses).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# workdir-relative locations of each kind of artifact (must match llm_asr.paths.Paths)
CORPUS = "data/corpus"
MANIFESTS = "data/manifests"
FEATURES = "data/features"
CTC_MODEL = "models/ctc"
SPEECH_LLM_MODEL = "models/speech_llm"
REPORTS = "reports"

# Shared storage (a ReadWriteMany PVC on the cluster): download caches and TrainJob workdirs.
SHARED_MOUNT = "/mnt/llm-asr"


def grid_overrides(overrides: list[str], stride_ms: int = 0, lora_rank: int = -1) -> list[str]:
    """The pipeline's overrides plus one ablation grid point (0 / -1 = keep the config's value)."""
    out = list(overrides)
    if stride_ms > 0:
        out.append(f"speech_llm.stride_ms={stride_ms}")
    if lora_rank >= 0:
        out.append(f"speech_llm.lora.rank={lora_rank}")
    return out


def _link(link: Path, target: str | os.PathLike[str]) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(target).resolve(), target_is_directory=True)


def _configure_env(pipeline_run: str) -> None:
    """Caches on shared storage when mounted; group this task's MLflow run with its pipeline run."""
    if pipeline_run:
        os.environ.setdefault("LLM_ASR_PIPELINE_RUN", pipeline_run)
    shared = Path(SHARED_MOUNT)
    if shared.is_dir() and os.access(shared, os.W_OK):
        os.environ.setdefault("LLM_ASR_CACHE", str(shared / "cache"))
        os.environ.setdefault("HF_HOME", str(shared / "hf"))


@contextlib.contextmanager
def task_workdir(
    inputs: Mapping[str, str | None] = (),  # type: ignore[assignment]
    outputs: Mapping[str, str] = (),  # type: ignore[assignment]
    pipeline_run: str = "",
) -> Iterator[Any]:
    """Yield `Paths` of a fresh workdir whose sub-trees link to the task's artifact dirs.

    `inputs` / `outputs` map a workdir-relative location (e.g. `FEATURES`) to an
    artifact path; output dirs are created. Inputs given as None are skipped (optional
    artifacts). The working directory is the workdir while the stage runs.
    """
    from llm_asr.paths import Paths

    _configure_env(pipeline_run)
    root = os.environ.get("LLM_ASR_KFP_WORK_ROOT") or None
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="llm-asr-task-", dir=root))
    for rel, src in dict(inputs).items():
        if src:
            _link(workdir / rel, src)
    for rel, dst in dict(outputs).items():
        Path(dst).mkdir(parents=True, exist_ok=True)
        _link(workdir / rel, dst)
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        yield Paths.at(workdir)
    finally:
        os.chdir(previous)


def numbers(result: Any, prefix: str = "") -> dict[str, float]:
    """Finite numbers of a (nested) stage result, flattened to dotted keys, for a Metrics artifact."""
    out: dict[str, float] = {}
    if isinstance(result, Mapping):
        for key, value in result.items():
            out.update(numbers(value, f"{prefix}{key}."))
    elif isinstance(result, (int, float)) and not isinstance(result, bool):
        if math.isfinite(result):
            out[prefix.rstrip(".")] = float(result)
    return out


def log_metrics(metrics: Any, result: Any) -> dict[str, float]:
    """Log a stage result's numbers into a KFP `Output[Metrics]` (shown in the KFP UI)."""
    flat = numbers(result)
    for key, value in flat.items():
        metrics.log_metric(key, value)
    return flat
