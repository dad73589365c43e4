"""What `kubectl kustomize` renders for infra/base and the two overlays, as `kubectl apply -k` would send it.

The overlays are what a platform engineer applies: secrets and the StorageClass parameter
live only there; the paper overlay adds the Hugging Face token, the model cache and its
prefill Job. Rendering needs kubectl (kustomize is built in); without it these are skipped
and tests/infra/test_manifests.py still checks the files.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
BUILDS = ("base", "overlays/example", "overlays/paper")
OVERLAYS = BUILDS[1:]
WORKLOADS = ("Deployment", "StatefulSet", "Job", "TrainingRuntime")

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")


@cache
def render(build: str) -> tuple[dict, ...]:
    out = subprocess.run(["kubectl", "kustomize", str(INFRA / build)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def _of(build: str, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in render(build) if d["kind"] == kind}


def pod_specs(build: str) -> list[tuple[str, dict]]:
    """(name, pod spec) of every workload in BUILD; a TrainingRuntime's are its replicatedJobs' pods."""
    out = []
    for d in render(build):
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "TrainingRuntime":
            for job in d["spec"]["template"]["spec"]["replicatedJobs"]:
                out.append((f"{d['metadata']['name']}/{job['name']}", job["template"]["spec"]["template"]["spec"]))
    return out


def containers(build: str) -> list[tuple[str, dict]]:
    return [(f"{name}/{c['name']}", c) for name, pod in pod_specs(build) for c in pod["containers"]]


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def storage_class_parameter() -> str:
    (params,) = yaml.safe_load_all((INFRA / "overlays/example/params.yaml").read_text())
    return params["data"]["storageClassName"]


@pytest.mark.parametrize("build", BUILDS)
def test_every_build_renders_and_keeps_one_namespace(build):
    namespaces = {d["metadata"].get("namespace") for d in render(build)}
    assert namespaces == {"kubeflow-user-example-com"}, namespaces
    for binding in _of(build, "RoleBinding").values():
        assert {s["namespace"] for s in binding["subjects"]} == namespaces


def test_the_base_holds_no_secrets_and_no_storage_class():
    """Applying the base must never overwrite a namespace's real Secrets with templates."""
    assert not _of("base", "Secret")
    files = [d for p in (INFRA / "base").rglob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    assert not [d for d in files if d.get("kind") == "Secret"]
    assert all("storageClassName" not in pvc["spec"] for pvc in _of("base", "PersistentVolumeClaim").values())


@pytest.mark.parametrize("build", OVERLAYS)
def test_the_storage_class_parameter_reaches_every_pvc_and_is_never_applied(build):
    pvcs = _of(build, "PersistentVolumeClaim")
    assert "llm-asr-shared" in pvcs
    assert {name: p["spec"].get("storageClassName") for name, p in pvcs.items()} == dict.fromkeys(
        pvcs, storage_class_parameter())
    assert all(p["spec"]["accessModes"] == ["ReadWriteMany"] for p in pvcs.values())
    assert "llm-asr-params" not in _of(build, "ConfigMap")  # local-config: a kustomize input only


@pytest.mark.parametrize("build", OVERLAYS)
def test_every_secret_and_pvc_a_pod_names_is_in_the_same_build(build):
    secrets = {name: set(s["stringData"]) for name, s in _of(build, "Secret").items()}
    for name, c in containers(build):
        for var, e in env(c).items():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], set()), f"{name}: {var} from {ref}"
    pvcs = set(_of(build, "PersistentVolumeClaim"))
    for name, pod in pod_specs(build):
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        assert claims <= pvcs, name


def test_the_example_holds_the_pipeline_secrets_and_the_paper_adds_the_hf_token():
    from pipelines import platform

    example, paper = set(_of("overlays/example", "Secret")), set(_of("overlays/paper", "Secret"))
    assert example == set(platform.SECRETS) | {"llm-asr-postgres"}
    assert paper == example | {"llm-asr-hf"}
    assert platform.SHARED_PVC in _of("overlays/example", "PersistentVolumeClaim")


def test_hf_hub_offline_everywhere_but_the_papers_prefill_job():
    """The default profile's LLM ships in the image: its pods never reach the Hub. The paper's Llama-2
    comes from the Hub once, into the model cache, by the only pod holding the token."""
    from llm_asr.config import load_config

    assert load_config().speech_llm.llm.source != "hub"
    for name, c in containers("overlays/example"):
        assert env(c).get("HF_HUB_OFFLINE", {"value": "1"})["value"] == "1", name
        assert "HF_TOKEN" not in env(c), name
    online = {name: c for name, c in containers("overlays/paper") if env(c).get("HF_HUB_OFFLINE", {}).get("value") == "0"}
    assert list(online) == ["llm-asr-hf-prefill/prefill"]
    assert [name for name, c in containers("overlays/paper") if "HF_TOKEN" in env(c)] == list(online)
    (prefill,) = online.values()
    assert env(prefill)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "llm-asr-hf", "key": "token"}
    assert env(prefill)["LLM_ASR_HF_MODEL"]["value"] == load_config("paper").speech_llm.llm.name_or_path


def test_the_model_cache_is_mounted_where_every_training_node_looks_for_hf_weights():
    from components.workspace import SHARED_MOUNT

    hf_home = f"{SHARED_MOUNT}/hf"  # HF_HOME of every task and TrainJob (components/workspace.py, trainjob.py)
    (job,) = _of("overlays/paper", "Job").values()
    pod = job["spec"]["template"]["spec"]
    (prefill,) = pod["containers"]
    assert env(prefill)["HF_HOME"]["value"] == hf_home
    assert [m["mountPath"] for m in prefill["volumeMounts"]] == [hf_home]
    (runtime,) = _of("overlays/paper", "TrainingRuntime").values()
    (node_job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    node_pod = node_job["template"]["spec"]["template"]["spec"]
    (node,) = node_pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in node["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in node_pod["volumes"]}
    assert mounts == {"llm-asr-model-cache": hf_home} and claims == {"llm-asr-model-cache": "llm-asr-model-cache"}
    assert env(node)["HF_HUB_OFFLINE"]["value"] == "1"  # training reads the cache, never the Hub
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]] == ["llm-asr-model-cache"]


def test_the_papers_runtime_still_passes_the_trainer_crd_and_webhook():
    from tests.infra.trainer_crds import runtime_webhook_errors, schema_errors

    (runtime,) = _of("overlays/paper", "TrainingRuntime").values()
    assert schema_errors(runtime) == [] and runtime_webhook_errors(runtime) == []


@pytest.mark.parametrize("build", OVERLAYS)
def test_every_pod_with_a_volume_sets_an_fs_group(build):
    """Volumes are group-writable for the image's user; the runtime's pods get llm-asr-shared from the TrainJob."""
    for d in render(build):
        if d["kind"] == "StatefulSet":
            assert d["spec"]["volumeClaimTemplates"] and d["spec"]["template"]["spec"]["securityContext"]["fsGroup"]
    for name, pod in pod_specs(build):
        if pod.get("volumes") or name.startswith("llm-asr-torch-distributed/"):
            ctx = pod["securityContext"]
            assert ctx["fsGroup"] == ctx["runAsGroup"], name
            assert ctx["fsGroupChangePolicy"] == "OnRootMismatch", name  # no recursive chown of 500 Gi per start


@pytest.mark.parametrize("build", OVERLAYS)
def test_every_container_requests_and_limits_cpu_and_memory(build):
    assert {name for name, _ in containers(build)} >= {"llm-asr-mlflow/mlflow", "llm-asr-postgres/postgres",
                                                       "llm-asr-torch-distributed/node/node"}
    for name, c in containers(build):
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: resources.{kind}"


@pytest.mark.parametrize("build", OVERLAYS)
def test_the_servers_have_readiness_and_liveness_probes(build):
    servers = [d for d in render(build) if d["kind"] in ("Deployment", "StatefulSet")]
    assert {d["metadata"]["name"] for d in servers} == {"llm-asr-mlflow", "llm-asr-postgres"}
    for d in servers:
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["readinessProbe"] and c["livenessProbe"], d["metadata"]["name"]
            # a liveness probe that fires before readiness could ever pass restarts a slow start forever
            assert c["livenessProbe"].get("initialDelaySeconds", 0) >= 30, d["metadata"]["name"]


@pytest.mark.parametrize("build", OVERLAYS)
def test_every_workload_runs_as_non_root(build):
    for name, pod in pod_specs(build):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
