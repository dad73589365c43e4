"""The ablation DAG: shared data, features and CTC; stage two fanned out over stride x LoRA rank.

LoRA rank 0 is the frozen LLM. Each grid point trains and evaluates its own
speech-LLM (`dsl.ParallelFor`), then `compare` writes the table and plots from this
run's MLflow runs. The grid is a pipeline parameter: a list of
`{"stride_ms": S, "lora_rank": R}` points (`grid()` builds the product).
"""

import itertools

from kfp import dsl

from components.compare import compare
from components.evaluate import evaluate
from components.train_speech_llm import train_speech_llm
from pipelines import platform
from pipelines.training import evaluate_ctc, shared_stages

STRIDES_MS = (80, 160, 240, 480, 960)  # DESIGN section 1: 40 ms x n
LORA_RANKS = (0, 8)  # 0 = frozen LLM


def grid(strides_ms=STRIDES_MS, lora_ranks=LORA_RANKS) -> list[dict[str, int]]:
    """Every (stride, rank) pair, the ParallelFor items."""
    return [{"stride_ms": int(s), "lora_rank": int(r)} for s, r in itertools.product(strides_ms, lora_ranks)]


@dsl.pipeline(name="llm-asr-ablation", description="Speech-LLM ASR: stride x LoRA-rank ablation on one CTC.")
def ablation_pipeline(
    profile: str = "default",
    overrides: list = [],
    grid_points: list = grid(),
):
    common = {"profile": profile, "overrides": overrides}
    data, feats, ctc = shared_stages(profile, overrides)
    evaluate_ctc(profile, overrides, data, feats, ctc)
    shared = {
        "manifests": data.outputs["manifests"], "features": feats.outputs["features"],
        "ctc_model": ctc.outputs["ctc_model"],
    }
    with dsl.ParallelFor(grid_points, name="grid-point", parallelism=4) as point:
        trained = platform.on_gpu(
            train_speech_llm(**common, **shared, stride_ms=point.stride_ms, lora_rank=point.lora_rank)
        )
        evaluated = platform.on_gpu(
            evaluate(
                **common, **shared, system="speech-llm", corpus=data.outputs["corpus"],
                speech_llm_model=trained.outputs["speech_llm_model"],
                stride_ms=point.stride_ms, lora_rank=point.lora_rank,
            ).set_display_name("evaluate-speech-llm")
        )
    platform.common(
        compare(**common, reports=dsl.Collected(evaluated.outputs["report"])), cpu="1", memory="4Gi"
    )
