"""`make pipeline-local`: the training pipeline end to end on micro through kfp.local (no cluster)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OVERRIDE = "evaluate.max_utterances_per_language=2"  # a pipeline parameter; also keeps the run short


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("kfp-local")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.local_run", "--profile", "micro", "--root", str(root)]
        + ["--set", OVERRIDE],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root, time.time() - start


def _task_dir(root: Path, task: str) -> Path:
    (run,) = (root / "artifacts").iterdir()
    return run / task


@pytest.mark.integration
def test_every_stage_ran_and_wrote_its_artifacts(local_run):
    root, seconds = local_run
    (run,) = (root / "artifacts").iterdir()
    tasks = {p.name for p in run.iterdir()}
    assert tasks >= {
        "prepare-data", "extract-features", "train-ctc", "train-speech-llm",
        "evaluate", "evaluate-2", "report", "register",
    }
    assert any((_task_dir(root, "extract-features") / "features").glob("cuts_*.jsonl.gz"))
    assert any((_task_dir(root, "train-speech-llm") / "speech_llm_model").iterdir())
    print(f"kfp.local micro training pipeline: {seconds:.0f} s")


@pytest.mark.integration
def test_reports_follow_the_evaluate_contract(local_run):
    root, _ = local_run
    merged = json.loads((_task_dir(root, "report") / "results" / "metrics.json").read_text())
    assert set(merged) == {"ctc", "speech-llm"}
    for system in ("ctc", "speech-llm"):
        assert merged[system]["system"] == system
        assert merged[system]["average_wer"] >= 0
        assert merged[system]["languages"]
    assert (_task_dir(root, "register") / "registration" / "registration.json").is_file()


@pytest.mark.integration
def test_all_stages_logged_under_one_mlflow_parent_run(local_run):
    import mlflow

    root, _ = local_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "llm-asr"]
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    stages = {r.data.tags["stage"] for r in children}
    assert stages == {
        "prepare_data", "extract_features", "train_ctc", "evaluate_ctc", "train_speech_llm",
        "evaluate_speech_llm", "report", "register",
    }
    assert all(r.data.tags["profile"] == "micro" for r in children)
    # the override travelled as a pipeline parameter into every stage's config
    assert all(r.data.params["evaluate.max_utterances_per_language"] == "2" for r in children)
