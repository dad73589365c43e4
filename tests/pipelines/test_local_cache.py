"""KFP caching: a second kfp.local run of the ablation reuses data, features and CTC, and stays traceable.

Two runs of `python -m pipelines.local_run --pipeline ablation --cache` under one root, the second
with one more grid point. The run id reaches tasks through the environment, not as an input, so
the shared stages' cache keys do not change; the new grid point trains, and compare names both
points' evaluations (the cached one from the first run) through the MLflow run each report records.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OVERRIDE = "evaluate.max_utterances_per_language=2"
SHARED = ("prepare-data", "extract-features", "train-ctc", "evaluate")  # evaluate: the CTC baseline


def _run(root: Path, grid: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.local_run", "--pipeline", "ablation", "--profile", "micro",
         "--root", str(root), "--set", OVERRIDE, "--grid", grid, "--cache"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, str, str]:
    root = tmp_path_factory.mktemp("kfp-cache")
    first = _run(root, "240x0")
    second = _run(root, "240x0,4")
    return root, first, second


def _ran(run_dir: Path) -> set[str]:
    """The tasks that executed in one kfp.local run: each writes its outputs under its own folder of
    the run's pipeline root; a cache hit writes nothing there. (kfp.local logs its hits at INFO level
    only inside some orchestration contexts, so the log is no reliable witness.)"""
    tasks = {d.name for d in run_dir.iterdir() if d.is_dir() and not d.name.startswith("for-loop")}
    for loop in run_dir.glob("for-loop-*"):
        tasks |= {f"{loop.name}/{d.name}" for d in loop.iterdir() if d.is_dir()}
    return tasks


@pytest.mark.integration
def test_the_second_run_reuses_data_features_and_ctc(two_runs):
    root, _, _ = two_runs
    first, second = sorted((root / "artifacts").iterdir())  # named by their start time
    ran_first, ran_second = _ran(first), _ran(second)
    assert set(SHARED) <= ran_first, ran_first
    assert not set(SHARED) & ran_second, ran_second  # data, features, CTC and its evaluation: cache hits
    new_point = "for-loop-1-iteration-1/train-speech-llm"  # 240 ms, rank 4: only in the second grid
    assert new_point in ran_second, ran_second
    assert "for-loop-1-iteration-0/train-speech-llm" not in ran_second  # the point both runs share
    assert "compare" in ran_second  # its input (the collected reports) changed


@pytest.mark.integration
def test_cached_stages_stay_traceable_and_compare_sees_both_points(two_runs):
    import mlflow

    root, _, _ = two_runs
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "llm-asr"]
    runs = client.search_runs([exp.experiment_id])
    parents = sorted((r for r in runs if r.data.tags.get("stage") == "pipeline"), key=lambda r: r.info.start_time)
    assert len(parents) == 2
    stages = {p.info.run_id: {r.data.tags["stage"] for r in runs
                               if r.data.tags.get("mlflow.parentRunId") == p.info.run_id} for p in parents}
    assert "train_ctc" in stages[parents[0].info.run_id]
    assert "train_ctc" not in stages[parents[1].info.run_id]  # from cache: no new training run
    import pandas as pd

    second_run = max((root / "artifacts").iterdir(), key=lambda d: d.stat().st_mtime)
    table = pd.read_csv(second_run / "compare" / "comparison" / "ablation.csv")
    assert sorted(table.lora_rank) == [0, 4]  # both grid points, the cached one included
    # the cached point's evaluation is the first run's MLflow run, named by its report artifact
    eval_parents = {client.get_run(r).data.tags["mlflow.parentRunId"] for r in table.eval_run}
    assert eval_parents == {p.info.run_id for p in parents}
