"""Where each task runs on the cluster, through kfp-kubernetes: GPUs, nodes, shared storage, secrets.

Every name here must match `infra/` (the PVC, the secrets, the GPU node label and
taint); `tests/pipelines` checks the compiled pipelines against these values and
`tests/infra` checks the manifests. kfp.local ignores all of it, so the same pipeline
runs on a laptop.
"""

from __future__ import annotations

import os

from kfp import dsl, kubernetes

from components import PROJECT_IMAGE
from components.workspace import KFP_RUN_ENV, SHARED_MOUNT

SHARED_PVC = os.environ.get("LLM_ASR_PVC", "llm-asr-shared")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")  # label set by the NVIDIA GPU operator
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
RUN_AS_USER = 1000  # the image's non-root user (infra/Dockerfile)
# The KFP backend labels every pod of a run with its id; the downward API hands it to the task.
# (Not a task input: inputs enter the cache key. Pod env does not: the v2 driver's fingerprint is
# inputs, output specs, command/args, image and PVC names, backend/src/v2/driver/cache.go.)
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"
IMAGE_ENV = "LLM_ASR_IMAGE"  # the image reference, for the model versions' lineage

# Kubernetes Secret -> {secret key: environment variable}; templates in infra/base/secrets.
SECRETS: dict[str, dict[str, str]] = {
    "llm-asr-s3": {
        "access-key-id": "AWS_ACCESS_KEY_ID",
        "secret-access-key": "AWS_SECRET_ACCESS_KEY",
        "endpoint-url": "AWS_ENDPOINT_URL",
    },
    "llm-asr-mlflow": {
        "tracking-uri": "MLFLOW_TRACKING_URI",
        "s3-endpoint-url": "MLFLOW_S3_ENDPOINT_URL",
    },
}


def common(task: dsl.PipelineTask, cpu: str = "2", memory: str = "8Gi") -> dsl.PipelineTask:
    """Every task: CPU/memory requests, the shared PVC, credentials from secrets, non-root; the run id
    and the image reference in the environment."""
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.use_field_path_as_env(task, env_name=KFP_RUN_ENV, field_path=RUN_ID_FIELD)
    task.set_env_variable(IMAGE_ENV, PROJECT_IMAGE)  # a constant: the same in every run
    kubernetes.mount_pvc(task, pvc_name=SHARED_PVC, mount_path=SHARED_MOUNT)
    for secret, keys in SECRETS.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys)
    kubernetes.set_security_context(task, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER, run_as_non_root=True)
    return task


def on_gpu(task: dsl.PipelineTask, gpus: int = 1, cpu: str = "8", memory: str = "64Gi") -> dsl.PipelineTask:
    """A GPU task: the accelerator request plus the node selector and toleration of GPU nodes."""
    common(task, cpu=cpu, memory=memory)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    kubernetes.add_node_selector(task, *GPU_NODE_SELECTOR)
    kubernetes.add_toleration(task, **GPU_TOLERATION)
    return task


def uncached(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Tasks with side effects outside their artifacts (the model registry, a TrainJob)."""
    return task.set_caching_options(False)
