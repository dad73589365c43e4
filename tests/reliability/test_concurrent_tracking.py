"""8 processes log to one local MLflow tracking server at once; every metric must arrive."""

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

N_PROCS = 8
N_STEPS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_worker(uri: str, worker: int, workdir: str) -> None:
    """One stage-like process: the project's own tracking.stage_run (it creates the experiment
    if missing, so all 8 race to create it, as KFP ParallelFor stages do)."""
    import mlflow

    from llm_asr import tracking
    from llm_asr.config import load_config
    from llm_asr.paths import Paths

    cfg = load_config("micro", [f"tracking.tracking_uri={uri}", "tracking.experiment=concurrency"])
    with tracking.stage_run(cfg, Paths.at(workdir), f"worker-{worker}", {"worker": str(worker)}):
        for step in range(N_STEPS):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            mlflow.log_metrics({"a": step, "b": worker}, step=step)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root: Path = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
            "--default-artifact-root", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=root,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited during start-up")
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start within 120 s")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_eight_processes_lose_no_metric(mlflow_server, tmp_path):
    import mlflow

    # no experiment up front: the 8 processes race to create it (tracking.setup must survive that)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_log_worker, args=(mlflow_server, i, str(tmp_path))) for i in range(N_PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("concurrency")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == N_PROCS
    lost = 0
    for run in runs:
        for key in ("loss", "a", "b"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(len(history)))
            lost += N_STEPS - len(history)
    assert lost == 0, f"{lost} metric values lost under concurrency"
