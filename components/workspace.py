"""Run one stage inside a KFP task: artifact dirs laid out as a workdir, then `stages.<stage>.run`.

A stage reads and writes fixed places under a workdir (`llm_asr.paths.Paths`); a KFP
task gets one local directory per input and output artifact. `task_workdir` makes a
fresh per-task workdir whose input sub-trees (`data/features`, `models/ctc`, ...) are
links to the input artifacts, lets the stage write its outputs there, then moves them
into the output artifacts. The same code runs under `kfp.local` (artifacts under the
local pipeline root) and on a cluster (artifacts staged by the KFP launcher from the
object store).

This module is imported inside lightweight components, so it must be importable in the
project image (`infra/Dockerfile` puts the repo root on PYTHONPATH) and locally (the
repo root is the working directory of `kfp.local` subprocesses).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
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
# artifact metadata key: the absolute path the producing stage wrote the artifact at
WRITTEN_AT = "llm_asr_written_at"
# artifact metadata key: the MLflow run of the stage that wrote it (a cached artifact keeps its producer's)
MLFLOW_RUN = "mlflow_run_id"
# The KFP run id, from the pod's `pipeline/runid` label (downward API, `pipelines.platform.common`).
# Never a task input: inputs enter KFP's cache key, so a per-run input would defeat caching.
KFP_RUN_ENV = "LLM_ASR_KFP_RUN_ID"


def pipeline_run() -> str:
    """This pipeline run's name: the KFP run id on a cluster, `$LLM_ASR_PIPELINE_RUN` under
    `pipelines.local_run`; "" when neither is set."""
    return os.environ.get(KFP_RUN_ENV) or os.environ.get("LLM_ASR_PIPELINE_RUN", "")


def grid_overrides(overrides: list[str], stride_ms: int = 0, lora_rank: int = -1) -> list[str]:
    """The pipeline's overrides plus one ablation grid point (0 / -1 = keep the config's value).
    A grid point keeps the profile's own recipe (the default's token_ctc stacks frames at the
    stride before its projection, as the paper's linear projector does)."""
    out = list(overrides)
    if stride_ms > 0:
        out.append(f"speech_llm.stride_ms={stride_ms}")
    if lora_rank >= 0:
        out.append(f"speech_llm.lora.rank={lora_rank}")
    return out


def _link(link: Path, target: str | os.PathLike[str]) -> None:
    """Make `link` point at `target`, replacing a stale link; leave an existing real path alone."""
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(target).resolve(), target_is_directory=True)


def _configure_env() -> None:
    """Caches on shared storage when mounted; group this task's MLflow run with its pipeline run."""
    if pipeline_run():
        os.environ.setdefault("LLM_ASR_PIPELINE_RUN", pipeline_run())
    shared = Path(SHARED_MOUNT)
    if shared.is_dir() and os.access(shared, os.W_OK):
        os.environ.setdefault("LLM_ASR_CACHE", str(shared / "cache"))
        os.environ.setdefault("HF_HOME", str(shared / "hf"))


def _publish(produced: Path, artifact: Any) -> None:
    """Move a stage's output dir into its artifact and leave a link behind.

    The producer's path goes into the artifact's metadata: files written there may name
    absolute paths under it (lhotse manifests do), so consumers recreate it as a link. So does
    the stage's MLflow run, which stays the artifact's trace when a later run takes it from cache.
    """
    dest = Path(artifact.path)
    dest.mkdir(parents=True, exist_ok=True)
    for child in produced.iterdir():
        shutil.move(str(child), str(dest / child.name))
    produced.rmdir()
    _link(produced, dest)
    artifact.metadata[WRITTEN_AT] = str(produced)
    run = _last_mlflow_run()
    if run:
        artifact.metadata[MLFLOW_RUN] = run


def _last_mlflow_run() -> str:
    import mlflow

    run = mlflow.last_active_run()
    return run.info.run_id if run is not None else ""


@contextlib.contextmanager
def task_workdir(
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Yield `Paths` of a fresh workdir laid out from the task's artifacts.

    `inputs` / `outputs` map a workdir-relative location (e.g. `FEATURES`) to a KFP
    artifact (None: an absent optional input). Inputs are linked in (and also at the
    path their producer wrote them at); outputs start as empty real directories and
    move into their artifacts when the stage returns. The working directory is the
    workdir while the stage runs.
    """
    from llm_asr.paths import Paths

    _configure_env()
    root = os.environ.get("LLM_ASR_KFP_WORK_ROOT") or None
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="llm-asr-task-", dir=root)).resolve()
    for rel, artifact in (inputs or {}).items():
        if artifact is None:
            continue
        _link(workdir / rel, artifact.path)
        written_at = artifact.metadata.get(WRITTEN_AT)
        if written_at:
            _link(Path(written_at), artifact.path)
    for rel in outputs or {}:
        (workdir / rel).mkdir(parents=True)
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        yield Paths.at(workdir)
        for rel, artifact in (outputs or {}).items():
            _publish(workdir / rel, artifact)
    finally:
        os.chdir(previous)


def pipeline_run_filter(cfg: Any, paths: Any, run_name: str) -> list[str]:
    """`compare` tag filter selecting this pipeline run's stage runs (children of its MLflow parent)."""
    import mlflow

    from llm_asr import tracking

    tracking.setup(cfg, paths)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    found = mlflow.search_runs(
        [exp.experiment_id], filter_string=f"tags.pipeline_run = '{run_name}'", output_format="list", max_results=1
    )
    if not found:
        raise RuntimeError(f"no MLflow parent run tagged pipeline_run={run_name}: did the grid log to this server?")
    return [f"mlflow.parentRunId={found[0].info.run_id}"]


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
    # the same numbers as the artifact's file: kfp.local's task cache treats an output whose file is
    # missing as a cache miss (kfp/local/cache.py), and KFP stores nothing at a Metrics URI otherwise
    out = Path(metrics.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(flat, sort_keys=True) + "\n")
    return flat
