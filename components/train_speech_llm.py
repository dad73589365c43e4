"""KFP component: stage two in one pod (encoder + stacker + projector + LLM, LoRA or frozen)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def train_speech_llm(
    profile: str,
    overrides: list,
    manifests: Input[Dataset],
    features: Input[Dataset],
    ctc_model: Input[Model],
    speech_llm_model: Output[Model],
    metrics: Output[Metrics],
    stride_ms: int = 0,
    lora_rank: int = -1,
):
    """`llm_asr.stages.train_speech_llm.run` into `speech_llm_model`.

    `stride_ms` / `lora_rank` set one ablation grid point (0 / -1: the config's value).
    """
    from components.workspace import (
        CTC_MODEL, FEATURES, MANIFESTS, SPEECH_LLM_MODEL, grid_overrides, log_metrics, task_workdir,
    )
    from llm_asr.config import load_config
    from llm_asr.stages import train_speech_llm as stage

    cfg = load_config(profile, grid_overrides(overrides, stride_ms, lora_rank))
    inputs = {MANIFESTS: manifests, FEATURES: features, CTC_MODEL: ctc_model}
    with task_workdir(inputs, {SPEECH_LLM_MODEL: speech_llm_model}) as paths:
        result = stage.run(cfg, paths)
    log_metrics(metrics, result)
