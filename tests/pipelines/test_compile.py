"""`make compile`: both pipelines compile to IR that parses strictly and places every task right."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb
from kfp.pipeline_spec import pipeline_spec_pb2

from components import PROJECT_IMAGE
from components.workspace import KFP_RUN_ENV, SHARED_MOUNT, grid_overrides
from pipelines import platform
from pipelines.ablation import LORA_RANKS, STRIDES_MS
from pipelines.compile import compile_all

REPO = Path(__file__).resolve().parents[2]
GPU_STAGES = ("exec-train-ctc", "exec-train-speech-llm")  # stage two in a pod; CTC pretraining
ALL = ["training", "training-distributed", "ablation"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[pipeline_spec_pb2.PipelineSpec, dict[str, k8s_pb.KubernetesExecutorConfig]]]:
    out = tmp_path_factory.mktemp("build")
    parsed = {}
    for name, path in compile_all(out).items():
        pipeline_doc, platform_doc = yaml.safe_load_all(path.read_text())
        spec = json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec())  # unknown field -> error
        plat = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
        executors = {
            key: json_format.ParseDict(json_format.MessageToDict(value), k8s_pb.KubernetesExecutorConfig())
            for key, value in plat.platforms["kubernetes"].deployment_spec.executors.items()
        }
        parsed[name] = (spec, executors)
    return parsed


def test_make_compile_writes_ir_yaml(tmp_path):
    out = tmp_path / "build"
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--out", str(out)], cwd=REPO, check=True)
    assert sorted(p.name for p in out.iterdir()) == ["ablation.yaml", "training-distributed.yaml", "training.yaml"]


@pytest.mark.parametrize("name", ALL)
def test_every_executor_runs_the_project_image_without_installing(compiled, name):
    spec, _ = compiled[name]
    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    assert executors
    for key, value in executors.items():
        container = value.struct_value.fields["container"].struct_value.fields
        assert container["image"].string_value == PROJECT_IMAGE, key
        command = " ".join(v.string_value for v in container["command"].list_value.values)
        assert "pip install" not in command, f"{key} installs packages at run time"
        assert "llm_asr" in command, f"{key} does not call the project package"


@pytest.mark.parametrize("name", ALL)
def test_profile_and_overrides_are_pipeline_parameters(compiled, name):
    params = compiled[name][0].root.input_definitions.parameters
    assert params["profile"].default_value.string_value == ("paper" if name == "training-distributed" else "default")
    assert params["overrides"].parameter_type == pipeline_spec_pb2.ParameterType.LIST


@pytest.mark.parametrize("name", ALL)
def test_gpu_stages_request_gpu_node_selector_and_toleration(compiled, name):
    spec, executors = compiled[name]
    all_exec = spec.deployment_spec.fields["executors"].struct_value.fields
    gpu_execs = [k for k in all_exec if k.startswith(GPU_STAGES + ("exec-evaluate",))]
    assert any(k.startswith("exec-train-speech-llm") for k in gpu_execs)
    for key in gpu_execs:
        if key.endswith("trainjob"):
            continue  # a CPU launcher: its TrainJob asks for the GPUs (test_trainjob.py)
        resources = all_exec[key].struct_value.fields["container"].struct_value.fields["resources"].struct_value
        accel = resources.fields["accelerator"].struct_value.fields
        assert accel["resourceType"].string_value == platform.GPU_RESOURCE, key
        assert int(accel["resourceCount"].string_value) >= 1, key
        cfg = executors[key]
        assert dict(cfg.node_selector.labels) == dict([platform.GPU_NODE_SELECTOR]), key
        assert [(t.key, t.operator, t.effect) for t in cfg.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]


@pytest.mark.parametrize("name", ALL)
def test_every_stage_mounts_shared_storage_and_reads_credentials_from_secrets(compiled, name):
    spec, executors = compiled[name]
    assert set(executors) == set(spec.deployment_spec.fields["executors"].struct_value.fields)
    for key, cfg in executors.items():
        assert [(m.constant, m.mount_path) for m in cfg.pvc_mount] == [(platform.SHARED_PVC, SHARED_MOUNT)], key
        env = {(s.secret_name, k.secret_key): k.env_var for s in cfg.secret_as_env for k in s.key_to_env}
        assert env[("llm-asr-s3", "access-key-id")] == "AWS_ACCESS_KEY_ID", key
        assert env[("llm-asr-s3", "secret-access-key")] == "AWS_SECRET_ACCESS_KEY", key
        assert env[("llm-asr-mlflow", "tracking-uri")] == "MLFLOW_TRACKING_URI", key
        assert cfg.security_context.run_as_non_root, key


def test_secret_and_pvc_names_exist_in_infra():
    docs = [d for p in (REPO / "infra").rglob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    secrets = {d["metadata"]["name"]: set(d["stringData"]) for d in docs if d["kind"] == "Secret"}
    for secret, keys in platform.SECRETS.items():
        assert set(keys) <= secrets[secret], secret
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert platform.SHARED_PVC in pvcs


def test_ablation_fans_stage_two_over_the_grid_then_compares(compiled):
    spec, _ = compiled["ablation"]
    loops = [t for t in spec.root.dag.tasks.values() if t.HasField("parameter_iterator")]
    assert len(loops) == 1
    body = spec.components[loops[0].component_ref.name].dag.tasks
    assert {t.component_ref.name for t in body.values()} >= {"comp-train-speech-llm", "comp-evaluate-2"}
    assert "compare" in spec.root.dag.tasks
    grid = json_format.MessageToDict(spec.root.input_definitions.parameters["grid_points"].default_value)
    assert {p["lora_rank"] for p in grid} == set(LORA_RANKS) and 0 in LORA_RANKS
    assert {p["stride_ms"] for p in grid} == set(STRIDES_MS)
    assert len(grid) == len(STRIDES_MS) * len(LORA_RANKS)
    # the CTC model is trained once, outside the loop
    assert sum(t.component_ref.name == "comp-train-ctc" for t in spec.root.dag.tasks.values()) == 1


def test_distributed_training_launches_stage_two_as_a_trainjob_from_a_cpu_pod(compiled):
    spec, executors = compiled["training-distributed"]
    all_exec = spec.deployment_spec.fields["executors"].struct_value.fields
    assert "exec-train-speech-llm" not in all_exec
    launcher = all_exec["exec-train-speech-llm-trainjob"].struct_value.fields["container"].struct_value.fields
    assert "accelerator" not in launcher["resources"].struct_value.fields
    assert not executors["exec-train-speech-llm-trainjob"].node_selector.labels
    params = spec.root.input_definitions.parameters
    assert {"num_nodes", "gpus_per_node", "trainjob_deadline_hours"} <= set(params)
    tasks = _all_tasks(spec)
    assert not tasks["train-speech-llm-trainjob"].caching_options.enable_cache
    assert "deadline_hours" in tasks["train-speech-llm-trainjob"].inputs.parameters


def test_a_failed_distributed_run_deletes_its_trainjobs_on_exit(compiled):
    """Every task runs inside one dsl.ExitHandler; its exit task runs whatever the outcome."""
    spec, executors = compiled["training-distributed"]
    root = spec.root.dag.tasks
    assert set(root) == {"exit-handler-1", "delete-failed-trainjobs"}
    cleanup = root["delete-failed-trainjobs"]
    assert list(cleanup.dependent_tasks) == ["exit-handler-1"]
    policy = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy
    assert cleanup.trigger_policy.strategy == policy.ALL_UPSTREAM_TASKS_COMPLETED
    assert not cleanup.caching_options.enable_cache
    assert "status" in spec.components["comp-delete-failed-trainjobs"].input_definitions.parameters
    inside = spec.components[root["exit-handler-1"].component_ref.name].dag.tasks
    assert "train-speech-llm-trainjob" in inside and "register" in inside
    assert not executors["exec-delete-failed-trainjobs"].node_selector.labels  # a CPU pod


def _all_tasks(spec) -> dict:
    """Tasks of the root DAG and of every sub-DAG (exit handlers, loops), by name."""
    out = dict(spec.root.dag.tasks)
    for comp in spec.components.values():
        if comp.HasField("dag"):
            out.update(comp.dag.tasks)
    return out


@pytest.mark.parametrize("name", ALL)
def test_ctc_pretraining_reads_the_corpus_as_on_dvc(compiled, name):
    """train_ctc's LM text (mls_<language>/lm_text.txt) comes from prepare-data's corpus, as dvc.yaml's deps say."""
    spec, _ = compiled[name]
    artifacts = _all_tasks(spec)["train-ctc"].inputs.artifacts
    assert artifacts["corpus"].task_output_artifact.producer_task == "prepare-data"
    assert artifacts["corpus"].task_output_artifact.output_artifact_key == "corpus"
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train_ctc"]
    assert any(str(d).startswith("data/corpus") for d in dvc["deps"])


def test_a_grid_point_keeps_the_profiles_recipe():
    assert grid_overrides(["seed=1"], 240, 8) == ["seed=1", "speech_llm.stride_ms=240", "speech_llm.lora.rank=8"]
    assert grid_overrides(["seed=1"]) == ["seed=1"]  # no grid point: the profile's own projector


@pytest.mark.parametrize("name", ALL)
def test_no_task_input_changes_from_run_to_run(compiled, name):
    """Inputs enter KFP's cache key: a run-id placeholder (or any per-run value) as an input would make
    every rerun retrain everything. Tasks read the run id from their pod's label instead."""
    spec, executors = compiled[name]
    for task_name, task in _all_tasks(spec).items():
        for param, value in task.inputs.parameters.items():
            constant = json_format.MessageToDict(value.runtime_value.constant) if value.HasField("runtime_value") else ""
            assert "{{$.pipeline_job" not in str(constant), f"{task_name}.{param} = {constant}"
            assert "{{$.pipeline_task" not in str(constant), f"{task_name}.{param} = {constant}"
    for comp in spec.components.values():
        assert "pipeline_run" not in comp.input_definitions.parameters
    for key, cfg in executors.items():
        env = {f.name: f.field_path for f in cfg.field_path_as_env}
        assert env == {KFP_RUN_ENV: platform.RUN_ID_FIELD}, key


@pytest.mark.parametrize("name", ALL)
def test_every_task_knows_its_image_for_lineage(compiled, name):
    spec, _ = compiled[name]
    for key, value in spec.deployment_spec.fields["executors"].struct_value.fields.items():
        container = json_format.MessageToDict(value.struct_value)["container"]
        assert {e["name"]: e["value"] for e in container["env"]}[platform.IMAGE_ENV] == PROJECT_IMAGE, key


def test_the_run_id_reaches_a_task_from_its_environment(monkeypatch):
    from components.workspace import pipeline_run

    monkeypatch.delenv(KFP_RUN_ENV, raising=False)
    monkeypatch.setenv("LLM_ASR_PIPELINE_RUN", "kfp-local-1")
    assert pipeline_run() == "kfp-local-1"
    monkeypatch.setenv(KFP_RUN_ENV, "0b7c-run")  # on the cluster: the pod's pipeline/runid label
    assert pipeline_run() == "0b7c-run"
