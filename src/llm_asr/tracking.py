"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

Stages use `stage_run(cfg, paths, "train_ctc")` as a context manager; inside it,
`mlflow.log_metric(...)` etc. work as usual. The tracking URI is, in order:
`tracking.tracking_uri`, `$MLFLOW_TRACKING_URI`, or the embedded sqlite store
`sqlite:///<workdir>/mlflow.db` with artifacts under `<workdir>/mlartifacts/`.
A pipeline run groups its stages by `$LLM_ASR_PARENT_RUN_ID` (set by the orchestrator)
or, failing that, by `$LLM_ASR_PIPELINE_RUN` (a name shared by all stages of one run).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from llm_asr.config import REPO_ROOT, Config
from llm_asr.paths import Paths


def tracking_uri(cfg: Config, paths: Paths) -> str:
    return cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.mlflow_db}"


def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "none"


def data_hash(paths: Paths) -> str:
    """Digest of the manifests (which name every audio file and transcript)."""
    h = hashlib.sha256()
    for f in sorted(paths.manifests.glob("*.jsonl.gz")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_tags(cfg: Config, paths: Paths) -> dict[str, str]:
    return {
        "git_sha": _git_sha(),
        "dvc_lock_sha": _file_sha(paths.workdir / "dvc.lock"),
        "profile": cfg.profile,
        "stride_ms": str(cfg.speech_llm.stride_ms),
        "lora_rank": str(cfg.speech_llm.lora.rank),
        "llm": cfg.speech_llm.llm.name_or_path if cfg.speech_llm.llm.source != "random" else "random-tiny-llama",
        "projector": cfg.speech_llm.projector,
        "data_hash": data_hash(paths),
        "config_digest": cfg.digest(),
    }


def setup(cfg: Config, paths: Paths) -> str:
    import mlflow

    uri = tracking_uri(cfg, paths)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:"):
        paths.mlartifacts.mkdir(parents=True, exist_ok=True)
        if mlflow.get_experiment_by_name(cfg.tracking.experiment) is None:
            mlflow.create_experiment(cfg.tracking.experiment, artifact_location=paths.mlartifacts.as_uri())
    mlflow.set_experiment(cfg.tracking.experiment)
    return uri


def _parent_run_id(cfg: Config) -> str | None:
    import mlflow

    if os.environ.get("LLM_ASR_PARENT_RUN_ID"):
        return os.environ["LLM_ASR_PARENT_RUN_ID"]
    name = os.environ.get("LLM_ASR_PIPELINE_RUN")
    if not name:
        return None
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    found = mlflow.search_runs(
        [exp.experiment_id], filter_string=f"tags.pipeline_run = '{name}'", output_format="list", max_results=1
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(exp.experiment_id, run_name=name, tags={"pipeline_run": name})
    return run.info.run_id


@contextlib.contextmanager
def stage_run(cfg: Config, paths: Paths, stage: str, extra_tags: dict[str, str] | None = None) -> Iterator[Any]:
    """An MLflow run for one stage, nested under the pipeline's parent run when there is one."""
    import mlflow

    setup(cfg, paths)
    parent = _parent_run_id(cfg)
    tags = {**run_tags(cfg, paths), "stage": stage, **(extra_tags or {})}
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        flat = cfg.flat()
        # MLflow caps a batch at 100 params
        items = [(k, str(v)[:500]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
        yield run
