"""KFP component: the ablation table (stride x LoRA rank) and plots from this run's MLflow runs."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def compare(
    profile: str,
    overrides: list,
    pipeline_run: str,
    reports: Input[List[Dataset]],
    comparison: Output[Dataset],
    metrics: Output[Metrics],
):
    """`llm_asr.compare.run` over the runs of this pipeline run; `reports` are the grid's evaluations."""
    from pathlib import Path

    from components.workspace import log_metrics, pipeline_run_filter, task_workdir
    from llm_asr import compare as stage
    from llm_asr.config import load_config

    missing = [r.path for r in reports if not (Path(r.path) / "metrics.json").is_file()]
    if missing:
        raise ValueError(f"grid evaluations without metrics.json: {missing}")
    cfg = load_config(profile, overrides)
    with task_workdir(pipeline_run=pipeline_run) as paths:
        tags = pipeline_run_filter(cfg, paths, pipeline_run)
        result = stage.run(cfg, paths, tags=tags, out_dir=Path(comparison.path))
    log_metrics(metrics, result)
