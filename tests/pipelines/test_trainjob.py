"""Distributed stage two: the TrainJob the launcher would submit, built by the kubeflow SDK, no cluster."""

from pathlib import Path

import pytest

from components import PROJECT_IMAGE
from components.trainjob import TrainJobRequest, manifest
from components.workspace import SHARED_MOUNT
from pipelines import platform


@pytest.fixture(scope="module")
def job() -> dict:
    req = TrainJobRequest(
        profile="paper", overrides=("speech_llm.stride_ms=240", "speech_llm.lora.rank=8"),
        workdir=f"{SHARED_MOUNT}/runs/abc/0001", num_nodes=2, gpus_per_node=4, name="llm-asr-stage-two",
        links={"/tmp/llm-asr-task-x/data/features": f"{SHARED_MOUNT}/runs/abc/0001/data/features"},
    )
    return manifest(req, namespace="team-a")


def _node_pod(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    return rjob["template"]["spec"]["template"]["spec"]


def test_trainjob_targets_the_torch_distributed_runtime(job):
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["name"] == "llm-asr-stage-two"
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}


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


def test_nodes_mount_shared_storage_read_secrets_and_land_on_gpu_nodes(job):
    pod = _node_pod(job)
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == platform.SHARED_PVC
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": SHARED_MOUNT}]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    for secret, keys in platform.SECRETS.items():
        for key, var in keys.items():
            assert env[var] == {"name": secret, "key": key}
    assert pod["nodeSelector"] == dict([platform.GPU_NODE_SELECTOR])
    assert pod["tolerations"] == [platform.GPU_TOLERATION]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_cpu_only_trainjob_has_no_gpu_placement():
    req = TrainJobRequest(profile="micro", overrides=(), workdir="/mnt/llm-asr/runs/x", num_nodes=2, gpus_per_node=0)
    job = manifest(req)
    assert "nvidia.com/gpu" not in job["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert "nodeSelector" not in _node_pod(job) and "tolerations" not in _node_pod(job)


def test_bad_requests_are_rejected():
    with pytest.raises(ValueError, match="num_nodes"):
        TrainJobRequest(profile="micro", overrides=(), workdir="/mnt/llm-asr/x", num_nodes=0)
    with pytest.raises(ValueError, match="absolute"):
        TrainJobRequest(profile="micro", overrides=(), workdir="runs/x")


def test_runtime_manifest_is_the_one_in_infra():
    from components.trainjob import RUNTIME_MANIFEST

    assert RUNTIME_MANIFEST == Path(__file__).resolve().parents[2] / "infra/cluster/torch-distributed.yaml"
