"""KFP component: build or download the MLS-layout corpus and its lhotse manifests."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def prepare_data(
    profile: str,
    overrides: list,
    corpus: Output[Dataset],
    manifests: Output[Dataset],
    metrics: Output[Metrics],
):
    """`llm_asr.stages.prepare_data.run` into the `corpus` and `manifests` artifacts."""
    from components.workspace import CORPUS, MANIFESTS, log_metrics, task_workdir
    from llm_asr.config import load_config
    from llm_asr.stages import prepare_data as stage

    cfg = load_config(profile, overrides)
    outputs = {CORPUS: corpus, MANIFESTS: manifests}
    with task_workdir(outputs=outputs) as paths:
        result = stage.run(cfg, paths)
    log_metrics(metrics, result)
