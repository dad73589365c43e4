"""Stage two past one machine: a Kubeflow Trainer TrainJob (torch-distributed, N nodes x G GPUs).

`submit(request)` calls `TrainerClient().train(runtime="torch-distributed",
trainer=CustomTrainer(...))`; every node runs `train_speech_llm_ddp` under torchrun
(the runtime's entrypoint), which calls the same `llm_asr.stages.train_speech_llm.run`
with the same profile and overrides as every other orchestrator. The nodes read and
write a workdir on the shared PVC. `manifest(request)` builds the exact TrainJob the
SDK would create, without a cluster (`python -m components.trainjob --dry-run`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components import PROJECT_IMAGE
from components.workspace import SHARED_MOUNT

RUNTIME = "torch-distributed"
RUNTIME_MANIFEST = Path(__file__).resolve().parents[1] / "infra/cluster/torch-distributed.yaml"
NODE = "node"  # the runtime's trainer replicated job and container
SHARED_VOLUME = "llm-asr-shared"


def train_speech_llm_ddp(profile: str, overrides: list, workdir: str, links: dict | None = None) -> None:
    """Run on every rank by torchrun: stage two on the shared workdir (the trainer sets up DDP).

    links maps paths that manifests name (where upstream stages wrote them) to their
    copies under workdir; each node recreates them before reading. The SDK embeds this
    source in a bash heredoc, so it must not contain backticks or dollar signs.
    """
    import json
    import os
    from pathlib import Path

    from llm_asr.config import load_config
    from llm_asr.paths import Paths
    from llm_asr.stages import train_speech_llm

    for link, target in (links or {}).items():
        Path(link).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(target, link, target_is_directory=True)
        except FileExistsError:  # another local rank made it first
            pass
    summary = train_speech_llm.run(load_config(profile, list(overrides)), Paths.at(workdir))
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, default=str))


@dataclass(frozen=True)
class TrainJobRequest:
    """Everything one distributed stage-two run needs; `workdir` is a path on the shared PVC."""

    profile: str
    overrides: tuple[str, ...]
    workdir: str
    num_nodes: int = 1
    gpus_per_node: int = 1
    cpu_per_node: str = "8"
    memory_per_node: str = "64Gi"
    image: str = PROJECT_IMAGE
    pvc: str = "llm-asr-shared"
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # see train_speech_llm_ddp

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise ValueError(f"need num_nodes >= 1 and gpus_per_node >= 0, got {self.num_nodes}, {self.gpus_per_node}")
        if not self.workdir.startswith("/"):
            raise ValueError(f"workdir {self.workdir} must be an absolute path (on the cluster: under {SHARED_MOUNT})")


def trainer(req: TrainJobRequest) -> Any:
    from kubeflow.trainer import CustomTrainer

    resources: dict[str, Any] = {"cpu": req.cpu_per_node, "memory": req.memory_per_node}
    if req.gpus_per_node:
        resources["gpu"] = str(req.gpus_per_node)  # a Kubernetes quantity, not a float
    return CustomTrainer(
        func=train_speech_llm_ddp,
        func_args={
            "profile": req.profile, "overrides": list(req.overrides), "workdir": req.workdir, "links": req.links,
        },
        image=req.image,
        num_nodes=req.num_nodes,
        resources_per_node=resources,
        env={"HF_HOME": f"{SHARED_MOUNT}/hf", "LLM_ASR_CACHE": f"{SHARED_MOUNT}/cache", "PYTHONUNBUFFERED": "1"},
    )


def _node_pod_patch(req: TrainJobRequest) -> Any:
    from kubeflow.trainer.options import ContainerPatch, PodSpecPatch

    from pipelines.platform import GPU_NODE_SELECTOR, GPU_TOLERATION, RUN_AS_USER, SECRETS

    secret_env = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for secret, keys in SECRETS.items()
        for key, env in keys.items()
    ]
    container = ContainerPatch(
        name=NODE,
        env=secret_env,
        volume_mounts=[{"name": SHARED_VOLUME, "mountPath": SHARED_MOUNT}],
    )
    return PodSpecPatch(
        volumes=[{"name": SHARED_VOLUME, "persistentVolumeClaim": {"claimName": req.pvc}}],
        containers=[container],
        node_selector=dict([GPU_NODE_SELECTOR]) if req.gpus_per_node else None,
        tolerations=[GPU_TOLERATION] if req.gpus_per_node else None,
        security_context={"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "fsGroup": RUN_AS_USER},
    )


def options(req: TrainJobRequest) -> list[Any]:
    from kubeflow.trainer.options import (
        JobSetSpecPatch, JobSetTemplatePatch, JobSpecPatch, JobTemplatePatch, Labels, Name,
        PodTemplatePatch, ReplicatedJobPatch, RuntimePatch, TrainingRuntimeSpecPatch,
    )

    node = ReplicatedJobPatch(
        name=NODE, template=JobTemplatePatch(spec=JobSpecPatch(template=PodTemplatePatch(spec=_node_pod_patch(req))))
    )
    patch = RuntimePatch(
        training_runtime_spec=TrainingRuntimeSpecPatch(
            template=JobSetTemplatePatch(spec=JobSetSpecPatch(replicated_jobs=[node]))
        )
    )
    opts: list[Any] = [Labels({"app.kubernetes.io/part-of": "llm-asr", **req.labels}), patch]
    if req.name:
        opts.insert(0, Name(req.name))
    return opts


class _DryRunApi:
    """The Kubernetes CustomObjectsApi of a dry run: serves the runtime from infra/, records the TrainJob."""

    def __init__(self, runtime_cr: dict[str, Any]):
        self.runtime_cr = runtime_cr
        self.created: list[dict[str, Any]] = []

    def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client import ApiException

        raise ApiException(status=404, reason="dry run: no namespaced runtime")

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str, **_: Any) -> Any:
        if name != self.runtime_cr["metadata"]["name"]:
            raise LookupError(f"dry run knows only runtime {self.runtime_cr['metadata']['name']}, not {name}")
        runtime_cr = self.runtime_cr

        class _Done:
            def get(self, timeout: float | None = None) -> dict[str, Any]:
                return runtime_cr

        return _Done()

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: Any):
        self.created.append({"namespace": namespace, "plural": plural, "body": body})
        return body


def manifest(req: TrainJobRequest, namespace: str = "default", runtime_manifest: Path = RUNTIME_MANIFEST) -> dict:
    """The TrainJob that `submit` would create, built by the SDK's own code path, without a cluster."""
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend

    api = _DryRunApi(yaml.safe_load(runtime_manifest.read_text()))
    backend = KubernetesBackend.__new__(KubernetesBackend)  # skip kube-config loading: no cluster
    backend.custom_api, backend.core_api, backend.namespace = api, None, namespace
    backend.train(runtime=RUNTIME, trainer=trainer(req), options=options(req))
    (created,) = api.created
    return json.loads(json.dumps(created["body"], default=str))


def submit(req: TrainJobRequest, namespace: str | None = None, timeout_s: int = 7 * 24 * 3600) -> str:
    """Create the TrainJob in the cluster (in-cluster or kube-config credentials), wait until it completes."""
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient

    client = TrainerClient(KubernetesBackendConfig(namespace=namespace or None))
    name = client.train(runtime=RUNTIME, trainer=trainer(req), options=options(req))
    print(f"TrainJob {name}: {req.num_nodes} node(s) x {req.gpus_per_node} GPU(s), workdir {req.workdir}")
    client.wait_for_job_status(name, status={"Complete"}, timeout=timeout_s, polling_interval=30)
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, repeatable")
    ap.add_argument("--workdir", default=f"{SHARED_MOUNT}/runs/manual")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=1)
    ap.add_argument("--namespace", default="")
    ap.add_argument("--dry-run", action="store_true", help="print the TrainJob YAML instead of submitting")
    args = ap.parse_args()
    req = TrainJobRequest(args.profile, tuple(args.overrides), args.workdir, args.nodes, args.gpus_per_node)
    if args.dry_run:
        print(yaml.safe_dump(manifest(req, args.namespace or "default"), sort_keys=False))
    else:
        submit(req, args.namespace)


if __name__ == "__main__":
    main()
