"""Distributed stage two: the TrainJob the launcher would submit, built by the kubeflow SDK, no cluster.

Every TrainJob is checked as the Kubeflow Trainer v2.3.0 API server would: strict schema
validation against its CRD and the admission rules of its webhook (tests/infra/trainer_crds.py).
"""

import copy
import sys
from pathlib import Path

import pytest
import yaml

from components import PROJECT_IMAGE
from components.trainjob import (
    DEADLINE_S, PIPELINE_RUN_LABEL, RUNTIME, RUNTIME_MANIFEST, TrainJobRequest, delete_trainjobs, label_value,
    manifest,
)
from components.workspace import SHARED_MOUNT
from pipelines import platform
from tests.infra.trainer_crds import schema_errors, webhook_errors

RUN_ID = "8f14e45f-ceea-4674-9d5a-1c2b3d4e5f60"  # a KFP run id


@pytest.fixture(scope="module")
def runtime() -> dict:
    return yaml.safe_load(RUNTIME_MANIFEST.read_text())


@pytest.fixture(scope="module")
def job() -> dict:
    req = TrainJobRequest(
        profile="paper", overrides=("speech_llm.stride_ms=240", "speech_llm.lora.rank=8"),
        workdir=f"{SHARED_MOUNT}/runs/abc/0001", num_nodes=2, gpus_per_node=4, name="llm-asr-stage-two",
        links={"/tmp/llm-asr-task-x/data/features": f"{SHARED_MOUNT}/runs/abc/0001/data/features"},
        pipeline_run=RUN_ID,
    )
    return manifest(req, namespace="team-a")


def test_the_trainjob_passes_the_trainers_schema_and_webhook(job, runtime):
    assert schema_errors(job) == []
    assert webhook_errors(job, runtime) == []


def test_the_dry_run_prints_an_admissible_trainjob_for_the_paper_profile(monkeypatch, capsys, runtime):
    from components import trainjob

    monkeypatch.setattr(sys, "argv", ["trainjob", "--dry-run", "--profile", "paper", "--nodes", "4",
                                      "--gpus-per-node", "8", "--deadline-hours", "12"])
    trainjob.main()
    printed = yaml.safe_load(capsys.readouterr().out)
    assert schema_errors(printed) == [] and webhook_errors(printed, runtime) == []
    assert printed["spec"]["trainer"]["numNodes"] == 4
    assert printed["spec"]["activeDeadlineSeconds"] == 12 * 3600
    assert "'profile': 'paper'" in " ".join(printed["spec"]["trainer"]["command"])


def test_webhook_rules_refuse_what_the_trainer_refuses(job, runtime):
    """The object v0 of this launcher printed (env on the node container in runtimePatches) is refused."""
    bad = copy.deepcopy(job)
    _node_pod(bad)["containers"][0]["env"] = [{"name": "MLFLOW_TRACKING_URI", "value": "http://x"}]
    assert any("must not have envs" in e for e in webhook_errors(bad, runtime))
    stray = copy.deepcopy(job)
    _node_pod(stray)["containers"].append({"name": "sidecar"})
    assert any("container sidecar not in runtime" in e for e in webhook_errors(stray, runtime))
    reserved = copy.deepcopy(job)
    reserved["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "3"})
    assert any("reserved" in e for e in webhook_errors(reserved, runtime))
    renamed = copy.deepcopy(job)
    renamed["metadata"]["name"] = "0-Stage_Two"
    assert any("RFC 1035" in e for e in webhook_errors(renamed, runtime))
    other = copy.deepcopy(job)
    other["spec"]["runtimeRef"] = {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}
    assert any("does not name the runtime" in e for e in webhook_errors(other, runtime))
    unknown = copy.deepcopy(job)
    unknown["spec"]["trainer"]["numProcPerNode"] = "auto"  # an int32 in v2.3
    assert any("numProcPerNode" in e for e in schema_errors(unknown))


def _node_pod(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    return rjob["template"]["spec"]["template"]["spec"]


def test_trainjob_targets_the_projects_own_runtime(job):
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["name"] == "llm-asr-stage-two"
    assert job["spec"]["runtimeRef"] == {"name": RUNTIME, "kind": "TrainingRuntime"}
    assert RUNTIME == "llm-asr-torch-distributed"


def test_trainjob_has_a_deadline_and_the_pipeline_runs_label(job):
    assert job["spec"]["activeDeadlineSeconds"] == DEADLINE_S
    assert job["metadata"]["labels"][PIPELINE_RUN_LABEL] == RUN_ID
    env = {e["name"]: e["value"] for e in job["spec"]["trainer"]["env"]}
    assert env["LLM_ASR_PIPELINE_RUN"] == RUN_ID  # stage runs nest under the pipeline's MLflow parent


def test_trainjob_asks_for_n_nodes_of_g_gpus_on_the_project_image(job):
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2
    assert trainer["image"] == PROJECT_IMAGE
    for kind in ("requests", "limits"):
        assert str(trainer["resourcesPerNode"][kind]["nvidia.com/gpu"]) == "4"


def test_every_node_runs_the_stage_under_torchrun_with_the_same_config(job):
    (script,) = [c for c in job["spec"]["trainer"]["command"] if "torchrun" in c]
    assert script.rstrip().endswith('torchrun "trainjob.py"')
    assert "train_speech_llm.run(load_config(profile, list(overrides)), Paths.at(workdir))" in script
    assert "'profile': 'paper'" in script
    assert "'overrides': ['speech_llm.stride_ms=240', 'speech_llm.lora.rank=8']" in script
    assert f"'workdir': '{SHARED_MOUNT}/runs/abc/0001'" in script
    # the function source sits in an unquoted bash heredoc: no command substitution may sneak in
    body = script.split("<< EOM", 1)[1].split("EOM", 1)[0]
    assert "`" not in body and "$" not in body


def test_nodes_mount_shared_storage_and_land_on_gpu_nodes(job):
    """Secrets reach the nodes through the runtime's env (tests/infra), never through runtimePatches."""
    pod = _node_pod(job)
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == platform.SHARED_PVC
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": SHARED_MOUNT}]
    assert "env" not in container
    assert pod["nodeSelector"] == dict([platform.GPU_NODE_SELECTOR])
    assert pod["tolerations"] == [platform.GPU_TOLERATION]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_cpu_only_trainjob_has_no_gpu_placement(runtime):
    req = TrainJobRequest(profile="micro", overrides=(), workdir="/mnt/llm-asr/runs/x", num_nodes=2, gpus_per_node=0)
    job = manifest(req)
    assert "nvidia.com/gpu" not in job["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert "nodeSelector" not in _node_pod(job) and "tolerations" not in _node_pod(job)
    assert schema_errors(job) == [] and webhook_errors(job, runtime) == []


def test_bad_requests_are_rejected():
    with pytest.raises(ValueError, match="num_nodes"):
        TrainJobRequest(profile="micro", overrides=(), workdir="/mnt/llm-asr/x", num_nodes=0)
    with pytest.raises(ValueError, match="absolute"):
        TrainJobRequest(profile="micro", overrides=(), workdir="runs/x")
    with pytest.raises(ValueError, match="deadline_s"):
        TrainJobRequest(profile="micro", overrides=(), workdir="/mnt/llm-asr/x", deadline_s=0)


def test_runtime_manifest_is_the_one_in_infra():
    assert RUNTIME_MANIFEST == Path(__file__).resolve().parents[2] / "infra/base/training-runtime.yaml"


class _FakeCustomObjects:
    def __init__(self, jobs: dict[str, dict]):
        self.jobs, self.deleted, self.selectors = jobs, [], []

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        self.selectors.append((namespace, label_selector))
        key, value = label_selector.split("=")
        items = [{"metadata": {"name": n, "labels": lb}} for n, lb in self.jobs.items() if lb.get(key) == value]
        return {"items": items}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        self.deleted.append((namespace, name, kwargs.get("propagation_policy")))


def test_cleanup_deletes_only_the_failed_runs_trainjobs():
    api = _FakeCustomObjects({
        "a1": {PIPELINE_RUN_LABEL: RUN_ID}, "a2": {PIPELINE_RUN_LABEL: RUN_ID},
        "other": {PIPELINE_RUN_LABEL: "another-run"}, "unlabelled": {},
    })
    assert delete_trainjobs(api, "team-a", RUN_ID) == ["a1", "a2"]
    assert api.selectors == [("team-a", f"{PIPELINE_RUN_LABEL}={RUN_ID}")]
    assert api.deleted == [("team-a", "a1", "Background"), ("team-a", "a2", "Background")]
    with pytest.raises(ValueError, match="empty label"):
        delete_trainjobs(api, "team-a", "")


def test_label_values_are_valid_kubernetes_labels():
    assert label_value(RUN_ID) == RUN_ID
    assert label_value("run/with spaces_" + "x" * 80) == ("run-with-spaces_" + "x" * 80)[:63]
    assert label_value("--a--") == "a"
