"""KFP component: stage two as a Kubeflow Trainer TrainJob (llm-asr-torch-distributed, N nodes x G GPUs).

The task itself is a small CPU pod: it copies its input artifacts to a workdir on the
shared PVC, submits the TrainJob (`components.trainjob.submit`), waits for it, and
copies the trained model back into its output artifact. Its service account needs
the RBAC in `infra/base/rbac.yaml`. The TrainJob carries the pipeline run's label, so
the pipeline's exit handler (`components/delete_failed_trainjobs.py`) can delete it when
the run fails, and stops at `deadline_hours`.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def train_speech_llm_trainjob(
    profile: str,
    overrides: list,
    manifests: Input[Dataset],
    features: Input[Dataset],
    ctc_model: Input[Model],
    speech_llm_model: Output[Model],
    metrics: Output[Metrics],
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    namespace: str = "",
    stride_ms: int = 0,
    lora_rank: int = -1,
    deadline_hours: float = 72.0,
):
    """`llm_asr.stages.train_speech_llm.run` on every node of a TrainJob; the model lands in `speech_llm_model`."""
    import shutil
    import time
    import uuid
    from pathlib import Path

    from components.trainjob import TrainJobRequest, submit
    from components.workspace import (
        CTC_MODEL, FEATURES, MANIFESTS, SHARED_MOUNT, SPEECH_LLM_MODEL, WRITTEN_AT, grid_overrides, pipeline_run,
    )

    run = pipeline_run()  # from the environment: an input would enter the cache key

    # the TrainJob's pods see only the shared PVC: stage the inputs there
    workdir = Path(SHARED_MOUNT) / "runs" / (run or "manual") / uuid.uuid4().hex[:8]
    links = {}
    for rel, artifact in {MANIFESTS: manifests, FEATURES: features, CTC_MODEL: ctc_model}.items():
        shutil.copytree(artifact.path, workdir / rel)
        if artifact.metadata.get(WRITTEN_AT):
            links[artifact.metadata[WRITTEN_AT]] = str(workdir / rel)
    req = TrainJobRequest(
        profile=profile, overrides=tuple(grid_overrides(overrides, stride_ms, lora_rank)), workdir=str(workdir),
        num_nodes=num_nodes, gpus_per_node=gpus_per_node, links=links, pipeline_run=run,
        deadline_s=max(1, round(deadline_hours * 3600)),
    )
    start = time.time()
    name = submit(req, namespace=namespace or None)
    shutil.copytree(workdir / SPEECH_LLM_MODEL, speech_llm_model.path, dirs_exist_ok=True)
    speech_llm_model.metadata["trainjob"] = name
    metrics.log_metric("trainjob_minutes", (time.time() - start) / 60)
    metrics.log_metric("world_size_gpus", num_nodes * gpus_per_node)
