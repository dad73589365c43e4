"""The training DAG as a Kubeflow pipeline: data -> features -> CTC -> speech-LLM -> evaluate -> register.

Same stages as `dvc.yaml` (each component calls `llm_asr.stages.<stage>.run`), with the
same inputs (train_ctc reads the corpus for its LM text, as on DVC). Profile and `--set`
style overrides are pipeline parameters. `training_pipeline` runs stage two in one GPU
pod; `training_distributed_pipeline` launches it as a Kubeflow Trainer TrainJob of
N nodes x G GPUs (a compile-time choice: kfp.local cannot merge If/Else branches with
dsl.OneOf, and the local run must be the same DAG), inside a `dsl.ExitHandler` that
deletes the run's TrainJobs when the run fails.
No task takes the run id as an input (inputs enter KFP's cache key: a rerun would retrain
everything); tasks read it from their environment (`pipelines.platform.common`).
Compile: `make compile`; run locally: `make pipeline-local`; submit: `pipelines/submit.py`.
"""

from kfp import dsl

from components.delete_failed_trainjobs import delete_failed_trainjobs
from components.evaluate import evaluate
from components.extract_features import extract_features
from components.prepare_data import prepare_data
from components.register import register
from components.report import report
from components.train_ctc import train_ctc
from components.train_speech_llm import train_speech_llm
from components.train_speech_llm_trainjob import train_speech_llm_trainjob
from pipelines import platform

def shared_stages(profile: str, overrides: list) -> tuple[dsl.PipelineTask, dsl.PipelineTask, dsl.PipelineTask]:
    """Data, features and CTC pretraining (also the baseline), shared by both pipelines."""
    common = {"profile": profile, "overrides": overrides}
    data = platform.common(prepare_data(**common), cpu="4", memory="16Gi")
    feats = platform.common(
        extract_features(**common, corpus=data.outputs["corpus"], manifests=data.outputs["manifests"]),
        cpu="8", memory="16Gi",
    )
    ctc = platform.on_gpu(
        train_ctc(
            **common, corpus=data.outputs["corpus"], manifests=data.outputs["manifests"],
            features=feats.outputs["features"],
        )
    )
    return data, feats, ctc


def evaluate_ctc(profile: str, overrides: list, data, feats, ctc, no_lm: bool = False) -> dsl.PipelineTask:
    """The CTC baseline with its n-gram LM, or without it (`no_lm`: the paper's LM-free comparison)."""
    task = evaluate(
        profile=profile, overrides=overrides, system="ctc",
        corpus=data.outputs["corpus"], manifests=data.outputs["manifests"],
        features=feats.outputs["features"], ctc_model=ctc.outputs["ctc_model"], no_lm=no_lm,
    ).set_display_name("evaluate-ctc-greedy" if no_lm else "evaluate-ctc")
    return platform.on_gpu(task)


def rest_of_dag(profile: str, overrides: list, data, feats, ctc, stage_two) -> None:
    """CTC baseline evaluation, then evaluate the speech-LLM, merge the reports, register."""
    common = {"profile": profile, "overrides": overrides}
    ctc_eval = evaluate_ctc(profile, overrides, data, feats, ctc)
    greedy_eval = evaluate_ctc(profile, overrides, data, feats, ctc, no_lm=True)
    model = stage_two.outputs["speech_llm_model"]
    llm_eval = platform.on_gpu(
        evaluate(
            **common, system="speech-llm", corpus=data.outputs["corpus"], manifests=data.outputs["manifests"],
            features=feats.outputs["features"], ctc_model=ctc.outputs["ctc_model"], speech_llm_model=model,
        ).set_display_name("evaluate-speech-llm")
    )
    merged = platform.common(
        report(**common, ctc_report=ctc_eval.outputs["report"], ctc_greedy_report=greedy_eval.outputs["report"],
               speech_llm_report=llm_eval.outputs["report"]),
        cpu="1", memory="2Gi",
    )
    platform.uncached(
        platform.common(
            register(
                **common, manifests=data.outputs["manifests"], features=feats.outputs["features"],
                ctc_model=ctc.outputs["ctc_model"], speech_llm_model=model, results=merged.outputs["results"],
            )
        )
    )


def _stage_two_inputs(data, feats, ctc) -> dict:
    return {
        "manifests": data.outputs["manifests"], "features": feats.outputs["features"],
        "ctc_model": ctc.outputs["ctc_model"],
    }


@dsl.pipeline(name="llm-asr-training", description="Speech-LLM ASR: the full training DAG, stage two on one GPU pod.")
def training_pipeline(profile: str = "default", overrides: list = []):
    common = {"profile": profile, "overrides": overrides}
    data, feats, ctc = shared_stages(profile, overrides)
    stage_two = platform.on_gpu(train_speech_llm(**common, **_stage_two_inputs(data, feats, ctc)))
    rest_of_dag(profile, overrides, data, feats, ctc, stage_two)


@dsl.pipeline(
    name="llm-asr-training-distributed",
    description="Speech-LLM ASR: the full training DAG, stage two as a Kubeflow Trainer TrainJob (N nodes x G GPUs).",
)
def training_distributed_pipeline(
    profile: str = "paper",
    overrides: list = [],
    num_nodes: int = 2,
    gpus_per_node: int = 8,
    trainjob_namespace: str = "",
    trainjob_deadline_hours: float = 72.0,
):
    common = {"profile": profile, "overrides": overrides}
    cleanup = delete_failed_trainjobs(namespace=trainjob_namespace)
    cleanup = platform.uncached(platform.common(cleanup, cpu="1", memory="1Gi")).set_display_name(
        "delete-failed-trainjobs")
    with dsl.ExitHandler(cleanup, name="training"):
        data, feats, ctc = shared_stages(profile, overrides)
        launched = train_speech_llm_trainjob(
            **common, **_stage_two_inputs(data, feats, ctc), num_nodes=num_nodes,
            gpus_per_node=gpus_per_node, namespace=trainjob_namespace, deadline_hours=trainjob_deadline_hours,
        )
        platform.uncached(platform.common(launched, cpu="1", memory="4Gi"))
        rest_of_dag(profile, overrides, data, feats, ctc, launched)
