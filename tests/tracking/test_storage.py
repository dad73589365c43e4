"""S3 storage against a real S3-compatible server on loopback (moto): MLflow artifacts and the DVC remote."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from llm_asr import tracking
from llm_asr.config import load_config
from llm_asr.paths import Paths
from tests.fixtures.tracking import free_port, stop, venv_env, wait_for_port

pytestmark = pytest.mark.integration


def _keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    resp = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in resp.get("Contents", [])]


def test_mlflow_artifacts_round_trip_through_s3(mlflow_store, s3_bucket, s3_server, tmp_path):
    import mlflow

    mlflow.create_experiment("s3-direct", artifact_location=f"s3://{s3_bucket}/mlflow")
    cfg = load_config("micro", ["tracking.experiment=s3-direct"])
    report = tmp_path / "report.json"
    report.write_text('{"average_wer": 12.5}\n')
    with tracking.stage_run(cfg, Paths.at(tmp_path), "evaluate") as run:
        mlflow.log_artifact(str(report), "reports")
    keys = _keys(s3_server["endpoint"], s3_bucket, "mlflow/")
    assert any(k.endswith("reports/report.json") for k in keys), keys
    uri = f"runs:/{run.info.run_id}/reports/report.json"
    back = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl"))
    assert Path(back).read_text() == report.read_text()


@pytest.fixture
def proxied_server(tmp_path, s3_bucket):
    """`mlflow server` with a sqlite backend and its artifacts proxied to the S3 bucket (a team setup)."""
    port = free_port()
    env = venv_env()  # carries AWS_* and MLFLOW_S3_ENDPOINT_URL from s3_bucket
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", f"s3://{s3_bucket}/proxied",
    ]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
    )
    try:
        wait_for_port(port, proc, timeout=120)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


def test_stage_run_against_a_tracking_server_with_s3_artifacts(
    proxied_server, s3_bucket, s3_server, tmp_path, monkeypatch
):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxied_server)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")  # the client only talks to the tracking server
    monkeypatch.setenv("LLM_ASR_PIPELINE_RUN", "pipeline-s3")
    cfg = load_config("micro")
    paths = Paths.at(tmp_path)
    (tmp_path / "table.md").write_text("| language | wer |\n")
    with tracking.stage_run(cfg, paths, "report") as run:
        mlflow.log_metric("average_wer", 50.0)
        mlflow.log_artifact(str(tmp_path / "table.md"), "reports")
    assert mlflow.get_tracking_uri() == proxied_server
    got = mlflow.get_run(run.info.run_id)
    assert got.data.tags["profile"] == "micro" and got.data.params["speech_llm.stride_ms"] == str(cfg.speech_llm.stride_ms)
    parent = mlflow.get_run(got.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["pipeline_run"] == "pipeline-s3" and parent.info.status == "FINISHED"
    assert any(k.endswith("reports/table.md") for k in _keys(s3_server["endpoint"], s3_bucket, "proxied/"))


def _sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_dvc_push_pull_round_trip_through_s3(s3_bucket, s3_server, tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    payload = {"data/a.txt": "hallo welt\n", "data/b.bin": "\x00\x01" * 1000}
    for name, text in payload.items():
        (repo / name).write_text(text)
    env = venv_env({"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                    "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"})
    _sh(["git", "init", "-q"], repo, env)
    _sh(["dvc", "init", "-q"], repo, env)
    _sh(["dvc", "add", "-q", "data"], repo, env)
    _sh(["dvc", "remote", "add", "-d", "storage", f"s3://{s3_bucket}/dvc"], repo, env)
    _sh(["dvc", "remote", "modify", "storage", "endpointurl", s3_server["endpoint"]], repo, env)
    _sh(["dvc", "push"], repo, env)
    assert len(_keys(s3_server["endpoint"], s3_bucket, "dvc/")) >= 3  # two files + the directory listing

    for name in payload:
        (repo / name).unlink()
    _sh(["rm", "-rf", ".dvc/cache"], repo, env)
    _sh(["dvc", "pull"], repo, env)
    for name, text in payload.items():
        assert (repo / name).read_text() == text
