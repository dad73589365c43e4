"""KFP component: register the evaluated speech-LLM in MLflow; `champion` moves only if it is better."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def register(
    profile: str,
    overrides: list,
    manifests: Input[Dataset],
    features: Input[Dataset],
    ctc_model: Input[Model],
    speech_llm_model: Input[Model],
    results: Input[Dataset],
    registration: Output[Dataset],
    metrics: Output[Metrics],
):
    """`llm_asr.stages.register.run`; `registration` holds the results plus registration.json."""
    import shutil

    from components.workspace import (
        CTC_MODEL, FEATURES, MANIFESTS, REPORTS, SPEECH_LLM_MODEL, log_metrics, task_workdir,
    )
    from llm_asr.config import load_config
    from llm_asr.stages import register as stage

    cfg = load_config(profile, overrides)
    inputs = {
        MANIFESTS: manifests, FEATURES: features, CTC_MODEL: ctc_model,
        SPEECH_LLM_MODEL: speech_llm_model,
    }
    with task_workdir(inputs, {REPORTS: registration}) as paths:
        shutil.copytree(results.path, paths.reports, dirs_exist_ok=True)
        result = stage.run(cfg, paths, model=paths.speech_llm_model)
    log_metrics(metrics, result)
