"""Run a pipeline on this machine through kfp.local, no Kubernetes, no Docker:
`python -m pipelines.local_run --profile micro` (what `make pipeline-local` does).

Every task is a subprocess of this venv (`SubprocessRunner(use_venv=False)`); Kubernetes
settings (GPUs, PVC, secrets) are ignored. All tasks share one MLflow store under
`--root` (the cluster gets `MLFLOW_TRACKING_URI` from a Secret instead) and one pipeline-run
name, `$LLM_ASR_PIPELINE_RUN`, fresh for each run (the cluster's tasks read the KFP run id).
`--cache` turns on kfp.local's task cache under `--root`: a rerun reuses every task whose
inputs are unchanged, as the cluster does (the key is the component, its inputs and the
image name, not the llm_asr code: clear `<root>/kfp-cache` after changing it).
"""

import argparse
import os
import time
import uuid
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _prepare_env(root: Path, profile: str, overrides: list[str]) -> None:
    from llm_asr import tracking
    from llm_asr.config import load_config
    from llm_asr.paths import Paths

    root.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root.resolve() / 'mlflow.db'}"
    os.environ["LLM_ASR_KFP_WORK_ROOT"] = str(root.resolve() / "work")
    # inherited by every task subprocess; never a task input, which would enter the cache key
    os.environ["LLM_ASR_PIPELINE_RUN"] = f"kfp-local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    os.environ.pop("LLM_ASR_KFP_RUN_ID", None)  # not a KFP backend run
    # components import components.workspace: the repo root must be importable in every task
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    # creates the experiment with its artifacts under <root>/mlartifacts before any task runs
    tracking.setup(load_config(profile, overrides), Paths.at(root))


def run_local(
    pipeline: str = "training", profile: str = "micro", overrides: list[str] | None = None,
    root: Path = Path("build/local"), cache: bool = False, **params,
) -> Path:
    """Run `pipeline` end to end; returns the kfp.local pipeline root holding every artifact.
    `cache`: reuse the outputs of tasks whose inputs are unchanged since an earlier run under ROOT."""
    import kfp.local

    from pipelines.compile import PIPELINES

    overrides = list(overrides or [])
    _prepare_env(root, profile, overrides)
    pipeline_root = root.resolve() / "artifacts"
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
        enable_caching=cache, cache_root=str(root.resolve() / "kfp-cache"),
    )
    # the project image name has no "python" in it; locally the venv stands in for the image
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    PIPELINES[pipeline](profile=profile, overrides=overrides, **params)
    return pipeline_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", choices=["training", "ablation"], default="training")
    ap.add_argument("--profile", default="micro")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, repeatable")
    ap.add_argument("--root", type=Path, default=Path("build/local"), help="artifacts, workdirs, MLflow store")
    ap.add_argument("--grid", default="", help="ablation grid STRIDES x RANKS, e.g. 80,160x0,4")
    ap.add_argument("--cache", action="store_true", help="reuse unchanged tasks of earlier runs under --root")
    args = ap.parse_args()
    params = {}
    if args.grid:
        from pipelines.submit import parse_grid

        params["grid_points"] = parse_grid(args.grid)
    start = time.time()
    out = run_local(args.pipeline, args.profile, args.overrides, args.root, cache=args.cache, **params)
    print(f"{args.pipeline} pipeline ({args.profile}) finished in {time.time() - start:.0f} s; artifacts: {out}")


if __name__ == "__main__":
    main()
