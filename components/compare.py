"""KFP component: the ablation table (stride x LoRA rank) and plots from this run's MLflow runs."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def compare(
    profile: str,
    overrides: list,
    reports: Input[List[Dataset]],
    comparison: Output[Dataset],
    metrics: Output[Metrics],
):
    """`llm_asr.compare.run` over the grid's evaluations (`reports`), named by the MLflow run each
    artifact records: a grid point taken from cache names its earlier run (else: this run's runs)."""
    from pathlib import Path

    from components.workspace import MLFLOW_RUN, log_metrics, pipeline_run, pipeline_run_filter, task_workdir
    from llm_asr import compare as stage
    from llm_asr.config import load_config

    missing = [r.path for r in reports if not (Path(r.path) / "metrics.json").is_file()]
    if missing:
        raise ValueError(f"grid evaluations without metrics.json: {missing}")
    cfg = load_config(profile, overrides)
    run_ids = [r.metadata.get(MLFLOW_RUN) for r in reports]
    with task_workdir() as paths:
        if all(run_ids):
            result = stage.run(cfg, paths, run_ids=run_ids, out_dir=Path(comparison.path))
        else:
            tags = pipeline_run_filter(cfg, paths, pipeline_run())
            result = stage.run(cfg, paths, tags=tags, out_dir=Path(comparison.path))
    log_metrics(metrics, result)
