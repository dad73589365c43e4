"""The TrainJob's own node command, run here: torchrun with 2 CPU processes (gloo) on micro.

Kubeflow Trainer's torch plugin passes the topology to torchrun as PET_* variables; we
set them for one node of 2 processes and run the exact command from the TrainJob spec.
Only rank 0 may open the MLflow run and write the model directory: N x G ranks must not
leave N x G runs, nor delete and rewrite the shared model directory at once.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from components.trainjob import TrainJobRequest, manifest
from llm_asr.paths import Paths


@pytest.mark.integration
def test_trainjob_command_trains_stage_two_with_ddp_on_gloo(micro_ctc, tmp_path):
    _, micro, _ = micro_ctc
    work = Paths.at(tmp_path / "work")
    work.ctc_model.parent.mkdir(parents=True)
    (work.workdir / "data").symlink_to(micro.workdir / "data", target_is_directory=True)
    work.ctc_model.symlink_to(micro.ctc_model, target_is_directory=True)
    # the features name absolute paths under the workdir that wrote them: the links recreate it
    moved = tmp_path / "elsewhere" / "data"
    req = TrainJobRequest(
        profile="micro", overrides=("speech_llm.train.max_steps=2", "speech_llm.train.valid_every=2"),
        workdir=str(work.workdir), num_nodes=1, gpus_per_node=0, links={str(moved): str(micro.workdir / "data")},
    )
    (script,) = [c for c in manifest(req)["spec"]["trainer"]["command"] if "torchrun" in c]
    node = tmp_path / "node"  # the node's working directory, where the SDK writes trainjob.py
    node.mkdir()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_STANDALONE": "1", "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": store}
    proc = subprocess.run(["bash", "-c", script], cwd=node, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["world_size"] == 2
    assert (node / "trainjob.py").is_file()
    assert moved.is_symlink() and moved.resolve() == (micro.workdir / "data").resolve()
    assert any(work.speech_llm_model.iterdir())
    assert (work.speech_llm_model / "train_summary.json").is_file()
    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.data.tags.get("stage") for r in runs if r.data.tags.get("stage") == "train_speech_llm"] == [
        "train_speech_llm"], "every rank opened its own MLflow run: only rank 0 may"
