"""KFP component: stage one, the tokenizer and the conformer CTC encoder (also the baseline)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def train_ctc(
    profile: str,
    overrides: list,
    pipeline_run: str,
    manifests: Input[Dataset],
    features: Input[Dataset],
    ctc_model: Output[Model],
    metrics: Output[Metrics],
):
    """`llm_asr.stages.train_ctc.run` from the features into the `ctc_model` artifact."""
    from components.workspace import CTC_MODEL, FEATURES, MANIFESTS, log_metrics, task_workdir
    from llm_asr.config import load_config
    from llm_asr.stages import train_ctc as stage

    cfg = load_config(profile, overrides)
    inputs = {MANIFESTS: manifests, FEATURES: features}
    with task_workdir(inputs, {CTC_MODEL: ctc_model}, pipeline_run) as paths:
        result = stage.run(cfg, paths)
    log_metrics(metrics, result)
