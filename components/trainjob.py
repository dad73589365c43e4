"""Stage two past one machine: a Kubeflow Trainer (v2.3) TrainJob of N nodes x G GPUs.

`submit(request)` calls `TrainerClient().train(runtime="llm-asr-torch-distributed",
trainer=CustomTrainer(...))`; every node runs `train_speech_llm_ddp` under torchrun
(the runtime's entrypoint), which calls the same `llm_asr.stages.train_speech_llm.run`
with the same profile and overrides as every other orchestrator. The nodes read and
write a workdir on the shared PVC. `manifest(request)` builds the exact TrainJob the
SDK would create, without a cluster (`python -m components.trainjob --dry-run`).

The runtime is the namespaced TrainingRuntime in `infra/base/training-runtime.yaml`; it
carries the environment read from Secrets, because the Trainer's webhook refuses env on
the `node` container in runtimePatches. Each TrainJob is labelled with its pipeline run
and has a deadline; `delete_trainjobs` removes a failed run's TrainJobs (the pipeline's
exit handler calls it).
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

RUNTIME = "llm-asr-torch-distributed"  # project-owned: never the cluster's shared torch-distributed
RUNTIME_MANIFEST = Path(__file__).resolve().parents[1] / "infra/base/training-runtime.yaml"
NODE = "node"  # the runtime's trainer replicated job and container
SHARED_VOLUME = "llm-asr-shared"
PIPELINE_RUN_LABEL = "llm-asr/pipeline-run"  # on every TrainJob a pipeline run launches
DEADLINE_S = 3 * 24 * 3600  # default activeDeadlineSeconds: a hung rendezvous must not hold GPUs for ever


def label_value(text: str) -> str:
    """TEXT as a Kubernetes label value: [A-Za-z0-9._-], at most 63, alphanumeric at both ends."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63].strip("-._")


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
    pipeline_run: str = ""  # the KFP run id: a label (for cleanup) and the MLflow parent run's name
    deadline_s: int = DEADLINE_S  # the TrainJob fails (pods stopped) after this long

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise ValueError(f"need num_nodes >= 1 and gpus_per_node >= 0, got {self.num_nodes}, {self.gpus_per_node}")
        if self.deadline_s < 1:
            raise ValueError(f"deadline_s must be >= 1, got {self.deadline_s}")
        if not self.workdir.startswith("/"):
            raise ValueError(f"workdir {self.workdir} must be an absolute path (on the cluster: under {SHARED_MOUNT})")


def trainer(req: TrainJobRequest) -> Any:
    from kubeflow.trainer import CustomTrainer

    resources: dict[str, Any] = {"cpu": req.cpu_per_node, "memory": req.memory_per_node}
    if req.gpus_per_node:
        resources["gpu"] = str(req.gpus_per_node)  # a Kubernetes quantity, not a float
    # plain values only (the SDK writes them to spec.trainer.env, which the webhook allows);
    # credentials come from Secrets through the runtime's own env
    env = {"HF_HOME": f"{SHARED_MOUNT}/hf", "LLM_ASR_CACHE": f"{SHARED_MOUNT}/cache", "PYTHONUNBUFFERED": "1"}
    if req.pipeline_run:
        env["LLM_ASR_PIPELINE_RUN"] = req.pipeline_run
    return CustomTrainer(
        func=train_speech_llm_ddp,
        func_args={
            "profile": req.profile, "overrides": list(req.overrides), "workdir": req.workdir, "links": req.links,
        },
        image=req.image,
        num_nodes=req.num_nodes,
        resources_per_node=resources,
        env=env,
    )


def _node_pod_patch(req: TrainJobRequest) -> Any:
    """Per-run placement and storage of the node pods; no env (the webhook refuses it for `node`)."""
    from kubeflow.trainer.options import ContainerPatch, PodSpecPatch

    from pipelines.platform import GPU_NODE_SELECTOR, GPU_TOLERATION, RUN_AS_USER

    container = ContainerPatch(name=NODE, volume_mounts=[{"name": SHARED_VOLUME, "mountPath": SHARED_MOUNT}])
    return PodSpecPatch(
        volumes=[{"name": SHARED_VOLUME, "persistentVolumeClaim": {"claimName": req.pvc}}],
        containers=[container],
        node_selector=dict([GPU_NODE_SELECTOR]) if req.gpus_per_node else None,
        tolerations=[GPU_TOLERATION] if req.gpus_per_node else None,
        security_context={"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "fsGroup": RUN_AS_USER},
    )


def options(req: TrainJobRequest) -> list[Any]:
    from kubeflow.trainer.options import (
        ActiveDeadlineSeconds, JobSetSpecPatch, JobSetTemplatePatch, JobSpecPatch, JobTemplatePatch, Labels,
        Name, PodTemplatePatch, ReplicatedJobPatch, RuntimePatch, TrainingRuntimeSpecPatch,
    )

    node = ReplicatedJobPatch(
        name=NODE, template=JobTemplatePatch(spec=JobSpecPatch(template=PodTemplatePatch(spec=_node_pod_patch(req))))
    )
    patch = RuntimePatch(
        training_runtime_spec=TrainingRuntimeSpecPatch(
            template=JobSetTemplatePatch(spec=JobSetSpecPatch(replicated_jobs=[node]))
        )
    )
    labels = {"app.kubernetes.io/part-of": "llm-asr", **req.labels}
    if req.pipeline_run:
        labels[PIPELINE_RUN_LABEL] = label_value(req.pipeline_run)
    opts: list[Any] = [Labels(labels), patch, ActiveDeadlineSeconds(req.deadline_s)]
    if req.name:
        opts.insert(0, Name(req.name))
    return opts


class _DryRunApi:
    """The Kubernetes CustomObjectsApi of a dry run: serves the runtime from infra/, records the TrainJob."""

    def __init__(self, runtime_cr: dict[str, Any]):
        self.runtime_cr = runtime_cr
        self.created: list[dict[str, Any]] = []

    def _serve(self, kind: str, name: str) -> Any:
        from kubernetes.client import ApiException

        if self.runtime_cr["kind"] != kind or self.runtime_cr["metadata"]["name"] != name:
            raise ApiException(status=404, reason=f"dry run: no {kind} {name}")
        runtime_cr = self.runtime_cr

        class _Done:
            def get(self, timeout: float | None = None) -> dict[str, Any]:
                return runtime_cr

        return _Done()

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                     **_: Any) -> Any:
        return self._serve("TrainingRuntime", name)

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str, **_: Any) -> Any:
        return self._serve("ClusterTrainingRuntime", name)

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


def submit(req: TrainJobRequest, namespace: str | None = None) -> str:
    """Create the TrainJob in the cluster (in-cluster or kube-config credentials), wait until it completes.

    Raises when it fails, including when its deadline passes (the Trainer then stops its pods)."""
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient

    client = TrainerClient(KubernetesBackendConfig(namespace=namespace or None))
    name = client.train(runtime=RUNTIME, trainer=trainer(req), options=options(req))
    print(f"TrainJob {name}: {req.num_nodes} node(s) x {req.gpus_per_node} GPU(s), workdir {req.workdir}, "
          f"deadline {req.deadline_s / 3600:g} h")
    # the Trainer ends the job at its deadline; waiting a little longer sees that as Failed, not a timeout
    client.wait_for_job_status(name, status={"Complete"}, timeout=req.deadline_s + 600, polling_interval=30)
    return name


def delete_trainjobs(api: Any, namespace: str, pipeline_run: str) -> list[str]:
    """Delete every TrainJob in NAMESPACE labelled with PIPELINE_RUN; returns their names.

    `api` is a Kubernetes CustomObjectsApi; deleting a TrainJob lets Kubernetes collect its
    JobSet and pods (owner references)."""
    from kubeflow.trainer.constants import constants

    if not label_value(pipeline_run):
        raise ValueError("no pipeline run id: refusing to select TrainJobs by an empty label")
    selector = f"{PIPELINE_RUN_LABEL}={label_value(pipeline_run)}"
    found = api.list_namespaced_custom_object(
        constants.GROUP, constants.VERSION, namespace, constants.TRAINJOB_PLURAL, label_selector=selector
    )
    names = [item["metadata"]["name"] for item in found.get("items", [])]
    for name in names:
        api.delete_namespaced_custom_object(
            constants.GROUP, constants.VERSION, namespace, constants.TRAINJOB_PLURAL, name,
            propagation_policy="Background",
        )
    return names


def delete_run_trainjobs(pipeline_run: str, namespace: str | None = None) -> list[str]:
    """`delete_trainjobs` against the cluster (in-cluster or kube-config credentials)."""
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend

    backend = KubernetesBackend(KubernetesBackendConfig(namespace=namespace or None))
    return delete_trainjobs(backend.custom_api, backend.namespace, pipeline_run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, repeatable")
    ap.add_argument("--workdir", default=f"{SHARED_MOUNT}/runs/manual")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=1)
    ap.add_argument("--deadline-hours", type=float, default=DEADLINE_S / 3600)
    ap.add_argument("--namespace", default="")
    ap.add_argument("--dry-run", action="store_true", help="print the TrainJob YAML instead of submitting")
    args = ap.parse_args()
    req = TrainJobRequest(args.profile, tuple(args.overrides), args.workdir, args.nodes, args.gpus_per_node,
                          deadline_s=round(args.deadline_hours * 3600))
    if args.dry_run:
        print(yaml.safe_dump(manifest(req, args.namespace or "default"), sort_keys=False))
    else:
        submit(req, args.namespace)


if __name__ == "__main__":
    main()
