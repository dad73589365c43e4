"""KFP component: log-mel fbank features and global CMVN stats for every cut."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def extract_features(
    profile: str,
    overrides: list,
    corpus: Input[Dataset],
    manifests: Input[Dataset],
    features: Output[Dataset],
    metrics: Output[Metrics],
):
    """`llm_asr.stages.extract_features.run` from the corpus into the `features` artifact."""
    from components.workspace import CORPUS, FEATURES, MANIFESTS, log_metrics, task_workdir
    from llm_asr.config import load_config
    from llm_asr.stages import extract_features as stage

    cfg = load_config(profile, overrides)
    inputs = {CORPUS: corpus, MANIFESTS: manifests}
    with task_workdir(inputs, {FEATURES: features}) as paths:
        result = stage.run(cfg, paths)
    log_metrics(metrics, result)
