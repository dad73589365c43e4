"""Stage runs: params, tags, one parent per pipeline run; model URIs that do not resolve."""

from __future__ import annotations

import pytest

from llm_asr import tracking
from llm_asr.config import load_config
from llm_asr.errors import UserError
from llm_asr.paths import Paths


def test_stages_of_one_pipeline_run_nest_under_one_parent(mlflow_store, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("LLM_ASR_PIPELINE_RUN", "repro-1")
    cfg = load_config("micro", ["speech_llm.stride_ms=240"])
    paths = Paths.at(tmp_path)
    for stage in ("prepare_data", "train_ctc"):
        with tracking.stage_run(cfg, paths, stage):
            mlflow.log_metric("loss", 1.0, step=1)
    with pytest.raises(RuntimeError), tracking.stage_run(cfg, paths, "evaluate"):
        raise RuntimeError("boom")

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if r.data.tags.get("pipeline_run") == "repro-1"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["stage"] for r in children) == ["evaluate", "prepare_data", "train_ctc"]
    assert {r.info.status for r in children if r.data.tags["stage"] != "evaluate"} == {"FINISHED"}
    assert parent.info.status == "FAILED"  # its last stage failed
    for run in children + [parent]:
        tags, params = run.data.tags, run.data.params
        assert tags["stride_ms"] == "240" and tags["lora_rank"] == "4" and tags["profile"] == "micro"
        assert tags["llm"] == "random-tiny-llama"
        assert {"git_sha", "dvc_lock_sha", "data_hash", "config_digest"} <= tags.keys()
        assert params["speech_llm.stride_ms"] == "240" and len(params) == len(cfg.flat())
    # the artifacts of the embedded store live under <workdir>/mlartifacts
    assert children[0].info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_without_a_pipeline_name_stage_runs_stand_alone(mlflow_store, tmp_path):
    import mlflow

    with tracking.stage_run(load_config("micro"), Paths.at(tmp_path), "report") as run:
        pass
    assert "mlflow.parentRunId" not in mlflow.get_run(run.info.run_id).data.tags


def test_an_unregistered_model_uri_is_a_user_error(mlflow_store, tmp_path):
    cfg, paths = load_config("micro"), Paths.at(tmp_path)
    tracking.setup(cfg, paths)
    with pytest.raises(UserError, match="llm-asr register"):
        tracking.download_model_dir(cfg, paths, "models:/llm-asr@champion")
