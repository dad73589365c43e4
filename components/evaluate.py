"""KFP component: per-language WER/CER of the CTC baseline or the speech-LLM on the corpus."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def evaluate(
    profile: str,
    overrides: list,
    system: str,
    corpus: Input[Dataset],
    manifests: Input[Dataset],
    features: Input[Dataset],
    ctc_model: Input[Model],
    report: Output[Dataset],
    metrics: Output[Metrics],
    speech_llm_model: Input[Model] = None,
    stride_ms: int = 0,
    lora_rank: int = -1,
    no_lm: bool = False,
):
    """`llm_asr.stages.evaluate.run`; `report` holds metrics.json, wer.md and wer.png.

    `system` is `ctc` (scores `ctc_model`) or `speech-llm` (scores `speech_llm_model`); `no_lm`
    decodes the CTC model without its n-gram LM (`ctc.lm.weight=0`: the report's `ctc-greedy`).
    """
    from components.workspace import (
        CORPUS, CTC_MODEL, FEATURES, MANIFESTS, REPORTS, SPEECH_LLM_MODEL,
        grid_overrides, log_metrics, task_workdir,
    )
    from llm_asr.config import load_config
    from llm_asr.stages import evaluate as stage

    if system not in ("ctc", "speech-llm"):
        raise ValueError(f"system must be 'ctc' or 'speech-llm', got '{system}'")
    if system == "speech-llm" and speech_llm_model is None:
        raise ValueError("system 'speech-llm' needs the speech_llm_model input")
    cfg = load_config(profile, grid_overrides(overrides, stride_ms, lora_rank) + (["ctc.lm.weight=0"] if no_lm else []))
    inputs = {
        CORPUS: corpus, MANIFESTS: manifests, FEATURES: features, CTC_MODEL: ctc_model,
        SPEECH_LLM_MODEL: speech_llm_model,
    }
    sub = f"{REPORTS}/{system.replace('-', '_')}{'_greedy' if no_lm else ''}"
    with task_workdir(inputs, {sub: report}) as paths:
        model = paths.ctc_model if system == "ctc" else paths.speech_llm_model
        out = paths.workdir / sub / "metrics.json"
        result = stage.run(cfg, paths, model=str(model), system=system, out=out)
    log_metrics(metrics, result)
