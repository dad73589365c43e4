"""infra/: every manifest parses, kustomizations are complete, no real secrets, non-root everywhere.

File by file, with no kubectl needed; what the kustomizations render is checked in test_kustomize.py.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUSTOMIZATIONS = sorted(INFRA.rglob("kustomization.yaml"))
MANIFESTS = sorted(p for p in INFRA.rglob("*.yaml") if p.name != "kustomization.yaml")
# kind -> apiVersion every manifest of that kind must use
API = {
    "PersistentVolumeClaim": "v1", "Secret": "v1", "Service": "v1", "Deployment": "apps/v1",
    "StatefulSet": "apps/v1", "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1", "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "TrainingRuntime": "trainer.kubeflow.org/v1alpha1", "ConfigMap": "v1", "Job": "batch/v1",
}
PLACEHOLDER = re.compile(r"^(REPLACE_ME.*|https?://[\w.-]+(:\d+)?/?|s3://REPLACE_ME[\w/-]*|mlflow)$")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_docs() -> list[dict]:
    return [d for p in MANIFESTS for d in _docs(p)]


def _pod_specs() -> list[tuple[str, dict]]:
    out = []
    for d in _all_docs():
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "TrainingRuntime":
            for job in d["spec"]["template"]["spec"]["replicatedJobs"]:
                out.append((job["name"], job["template"]["spec"]["template"]["spec"]))
    return out


def test_every_manifest_has_a_known_kind_api_version_and_name():
    assert len(MANIFESTS) >= 7
    for d in _all_docs():
        assert d["kind"] in API, d["kind"]
        assert d["apiVersion"] == API[d["kind"]], (d["kind"], d["apiVersion"])
        assert d["metadata"]["name"]


def test_required_fields():
    for d in _all_docs():
        kind, name = d["kind"], d["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            spec = d["spec"]
            labels = spec["template"]["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        if kind in ("Deployment", "StatefulSet", "Job"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert c["image"] and c["name"] and c["resources"]["limits"], name
        elif kind == "Service":
            assert d["spec"]["selector"] and d["spec"]["ports"], name
        elif kind in ("RoleBinding", "ClusterRoleBinding"):
            assert d["roleRef"]["name"] and d["subjects"], name
        elif kind == "PersistentVolumeClaim":
            assert d["spec"]["resources"]["requests"]["storage"], name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(INFRA)))
def test_kustomization_lists_existing_files_and_covers_its_folder(kustomization):
    k = yaml.safe_load(kustomization.read_text())
    assert k["kind"] in ("Kustomization", "Component")
    entries = [kustomization.parent / r for r in k.get("resources", []) + k.get("components", [])]
    dirs = [p for p in entries if p.is_dir()]
    assert all((p / "kustomization.yaml").is_file() for p in dirs), "a listed folder is not a kustomization"
    listed = {p.resolve() for p in entries if not p.is_dir()}
    assert all(p.is_file() for p in listed), [str(p) for p in listed if not p.is_file()]
    here = {p.resolve() for p in kustomization.parent.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert here == listed, "a manifest in this folder is not deployed (or listed twice)"


def test_the_base_holds_no_secrets_and_every_overlay_sets_the_storage_class():
    """`kubectl apply -k` of the base would overwrite real Secrets with templates; a PVC without a class
    gets the cluster default, usually ReadWriteOnce, and stays Pending."""
    base = [d for p in MANIFESTS if INFRA / "base" in p.parents for d in _docs(p)]
    assert base and not [d for d in base if d["kind"] == "Secret"]
    for overlay in ("example", "paper"):
        k = yaml.safe_load((INFRA / "overlays" / overlay / "kustomization.yaml").read_text())
        assert "../../components/storage-class" in k["components"], overlay


def test_secret_templates_hold_no_real_secrets():
    secrets = [d for d in _all_docs() if d["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {"llm-asr-s3", "llm-asr-mlflow", "llm-asr-postgres", "llm-asr-hf"}
    for s in secrets:
        assert "data" not in s, "base64 data in a template"
        for key, value in s["stringData"].items():
            assert PLACEHOLDER.match(value), f"{s['metadata']['name']}.{key} looks like a real value: {value!r}"


def test_workloads_run_as_non_root_without_privilege_escalation():
    pods = _pod_specs()
    assert {n for n, _ in pods} >= {"llm-asr-mlflow", "llm-asr-postgres", "node", "llm-asr-hf-prefill"}
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_mlflow_server_uses_postgres_and_s3_with_credentials_from_secrets():
    (server,) = [d for d in _all_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "llm-asr-mlflow"]
    (c,) = server["spec"]["template"]["spec"]["containers"]
    args = " ".join(c["args"])
    assert "--backend-store-uri=postgresql://" in args and "--artifacts-destination=" in args
    env = {e["name"]: e for e in c["env"]}
    for name in ("POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name


def test_rbac_lets_the_pipeline_runner_create_trainjobs():
    docs = _all_docs()
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    granted = set()
    for b in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if any(s["kind"] == "ServiceAccount" and s["name"] == "default-editor" for s in b["subjects"]):
            for rule in roles[b["roleRef"]["name"]]["rules"]:
                granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for verb in ("create", "get", "watch", "list", "delete"):  # list + delete: the exit handler's cleanup
        assert ("trainer.kubeflow.org", "trainjobs", verb) in granted
    assert ("trainer.kubeflow.org", "trainingruntimes", "get") in granted


def test_nothing_is_cluster_scoped():
    """One profile namespace holds everything: no tenant overwrites another's cluster objects."""
    assert [str(p.parent.relative_to(INFRA)) for p in KUSTOMIZATIONS] == [
        "base", "components/storage-class", "overlays/example", "overlays/paper"]
    assert not [d["kind"] for d in _all_docs() if d["kind"].startswith("Cluster")]


def test_training_runtime_is_project_owned_torch_on_the_project_image():
    from components import PROJECT_IMAGE
    from components.trainjob import RUNTIME, RUNTIME_MANIFEST

    (rt,) = [d for d in _all_docs() if d["kind"] == "TrainingRuntime"]
    assert _docs(RUNTIME_MANIFEST) == [rt]
    assert rt["metadata"]["name"] == RUNTIME and RUNTIME != "torch-distributed"  # not the upstream's name
    assert rt["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    assert rt["spec"]["mlPolicy"]["torch"] == {}  # v2.3: processes per node follow the GPUs (TrainJob's)
    (job,) = rt["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    (node,) = job["template"]["spec"]["template"]["spec"]["containers"]
    assert node["name"] == "node" and node["image"] == PROJECT_IMAGE


def test_training_runtime_reads_the_pipelines_secrets():
    """The env every pipeline task gets from Secrets (pipelines/platform.py); the runtime is where it can go."""
    from pipelines import platform

    (rt,) = [d for d in _all_docs() if d["kind"] == "TrainingRuntime"]
    (node,) = rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in node["env"] if "valueFrom" in e}
    assert env == {var: {"name": secret, "key": key}
                   for secret, keys in platform.SECRETS.items() for key, var in keys.items()}


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu", "Dockerfile.mlflow"])
def test_dockerfiles_run_as_a_non_root_user(dockerfile):
    lines = [ln.strip() for ln in (INFRA / dockerfile).read_text().splitlines() if ln.strip()]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "last USER must be non-root"
    assert "useradd" in " ".join(lines)


@pytest.mark.parametrize("dockerfile,base", [("Dockerfile", "nvidia/cuda:"), ("Dockerfile.cpu", "python:3.11")])
def test_project_images_install_from_the_lock(dockerfile, base):
    text = (INFRA / dockerfile).read_text()
    assert re.search(rf"^FROM {re.escape(base)}\S*runtime|^FROM {re.escape(base)}", text, re.M)
    assert "pip install --no-deps -r requirements.lock" in text
    assert "packages_to_install" not in text
    for path in ("src/", "components/", "pipelines/", "configs/"):
        assert f"COPY {path}" in text, path
