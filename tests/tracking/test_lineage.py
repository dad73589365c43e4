"""Lineage an auditor can follow: image git sha, KFP run id and image tags, dataset inputs with the
manifests' digests, the training run of a model directory, and the report's delta to the champion."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from llm_asr import tracking
from llm_asr.config import REPO_ROOT, load_config
from llm_asr.paths import Paths
from llm_asr.stages import register, report


def _manifests(paths: Paths) -> None:
    paths.manifests.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (paths.manifests / f"cuts_{split}.jsonl.gz").write_bytes(gzip.compress(f'{{"id": "{split}-1"}}\n'.encode()))


def _model_dir(root: Path) -> Path:
    model = root / "models" / "speech_llm"
    (model / "checkpoints").mkdir(parents=True)
    (model / "adapter.safetensors").write_bytes(b"weights")
    (model / "checkpoints" / "last.pt").write_bytes(b"resumable state, not the model")
    return model


def test_runs_carry_the_images_git_sha_kfp_run_and_image(mlflow_store, tmp_path, monkeypatch):
    import mlflow

    cfg, paths = load_config("micro"), Paths.at(tmp_path)
    with tracking.stage_run(cfg, paths, "report") as run:
        pass
    plain = mlflow.get_run(run.info.run_id).data.tags
    assert "kfp_run_id" not in plain and "image" not in plain  # not on KFP
    # a workdir without dvc.lock (every KFP task's) gets the lock the code came with
    assert plain["dvc_lock_sha"] == hashlib.sha256((REPO_ROOT / "dvc.lock").read_bytes()).hexdigest()[:16]
    monkeypatch.setenv("LLM_ASR_GIT_SHA", "0123abc")  # the image's build arg
    monkeypatch.setenv("LLM_ASR_KFP_RUN_ID", "7f3e-run")  # the pod's pipeline/runid label
    monkeypatch.setenv("LLM_ASR_IMAGE", "registry.example/llm-asr:0.1.0")
    with tracking.stage_run(cfg, paths, "report") as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert (tags["git_sha"], tags["kfp_run_id"], tags["image"]) == ("0123abc", "7f3e-run", "registry.example/llm-asr:0.1.0")


def test_training_runs_log_their_data_and_are_found_by_their_model(mlflow_store, tmp_path):
    import mlflow

    cfg, paths = load_config("micro"), Paths.at(tmp_path)
    _manifests(paths)
    model = _model_dir(tmp_path)
    with tracking.stage_run(cfg, paths, "train_speech_llm") as run:
        pass
    inputs = {i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags})
              for i in mlflow.get_run(run.info.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"train", "dev"}
    assert inputs["train"][0] == tracking.split_digest(paths, "train") != "none"
    assert inputs["train"][1]["mlflow.data.context"] == "training"
    assert tracking.find_training_run(cfg, paths, model) == run.info.run_id
    (model / "checkpoints" / "last.pt").write_bytes(b"resumed further")  # checkpoints are not the model
    assert tracking.find_training_run(cfg, paths, model) == run.info.run_id
    (model / "adapter.safetensors").write_bytes(b"other weights")
    assert tracking.find_training_run(cfg, paths, model) == "unknown"


def test_register_runs_log_all_three_splits(mlflow_store, tmp_path):
    import mlflow

    cfg, paths = load_config("micro"), Paths.at(tmp_path)
    _manifests(paths)
    with tracking.stage_run(cfg, paths, "register") as run:
        pass
    inputs = {i.dataset.name: i.dataset.digest for i in mlflow.get_run(run.info.run_id).inputs.dataset_inputs}
    assert inputs == {s: tracking.split_digest(paths, s) for s in ("train", "dev", "test")}


def test_version_lineage_names_the_training_run_and_kfp_run():
    cfg = load_config("micro")
    run_tags = {"git_sha": "abc", "dvc_lock_sha": "d1", "data_hash": "h", "config_digest": "c", "profile": "micro",
                "kfp_run_id": "7f3e-run", "image": "registry.example/llm-asr:0.1.0", "stage": "register"}
    tags = register.lineage_tags(cfg, run_tags, "reports/metrics.json", "train-run-1")
    assert tags["training_run_id"] == "train-run-1"
    assert (tags["kfp_run_id"], tags["image"], tags["git_sha"]) == ("7f3e-run", "registry.example/llm-asr:0.1.0", "abc")
    assert "stage" not in tags
    assert "kfp_run_id" not in register.lineage_tags(cfg, {k: v for k, v in run_tags.items() if k != "kfp_run_id"}, "x")


def _merged(llm: float, ctc: float) -> dict:
    return {"speech-llm": {"average_wer": llm, "split": "test"}, "ctc": {"average_wer": ctc, "split": "test"}}


def test_report_prints_the_delta_against_the_champion(mlflow_store, tmp_path, capsys):
    import mlflow

    cfg, paths = load_config("micro"), Paths.at(tmp_path)
    _manifests(paths)
    tracking.setup(cfg, paths)
    assert report.champion_delta(cfg, paths, _merged(30.0, 40.0)) is None  # no champion yet: said, not raised
    assert "no delta against llm-asr@champion" in capsys.readouterr().err.replace("\n", " ")
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        pass
    client.create_registered_model(cfg.tracking.registered_model)
    version = client.create_model_version(
        cfg.tracking.registered_model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
        tags={"test_wer": "32.5000", "ctc_wer": "41.0000", "split": "test",
              "data_sha": tracking.split_digest(paths, "test")},
    )
    client.set_registered_model_alias(cfg.tracking.registered_model, cfg.tracking.champion_alias, version.version)
    delta = report.champion_delta(cfg, paths, _merged(30.0, 40.0))
    assert delta == {"version": int(version.version), "comparable": True,
                     "speech_llm_wer_delta": -2.5, "ctc_wer_delta": -1.0}
    assert "-2.50" in capsys.readouterr().err
    other = Paths.at(tmp_path / "elsewhere")  # another test set: the delta is shown, marked not comparable
    assert report.champion_delta(cfg, other, _merged(30.0, 40.0))["comparable"] is False
