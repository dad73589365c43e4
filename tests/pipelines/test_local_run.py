"""`make pipeline-local`: the training pipeline end to end on micro through kfp.local (no cluster).

The run uses the default's LM text (`ctc.lm.text=lm_text`, micro uses the transcripts), so it
also shows that the KFP train-ctc task reads the corpus as DVC's stage does: the same n-gram LM.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OVERRIDE = "evaluate.max_utterances_per_language=2"  # a pipeline parameter; also keeps the run short
LM_TEXT = "ctc.lm.text=lm_text"  # the LM from each language's lm_text.txt in the corpus (as on DVC)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("kfp-local")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.local_run", "--profile", "micro", "--root", str(root)]
        + ["--set", OVERRIDE, "--set", LM_TEXT],
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
    assert set(merged) == {"ctc", "ctc-greedy", "speech-llm"}  # the three systems of one run
    assert merged["ctc-greedy"]["decoding"] == "greedy" != merged["ctc"]["decoding"]
    for system in ("ctc", "ctc-greedy", "speech-llm"):
        assert merged[system]["system"] == system.replace("-greedy", "")
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


def _ngram_counts(arpa: Path) -> dict[int, int]:
    """The `\\data\\` header of an ARPA file: {order: number of n-grams}."""
    counts = {}
    for line in arpa.read_text(encoding="utf-8").splitlines():
        if line.startswith("ngram "):
            order, size = line[len("ngram "):].split("=")
            counts[int(order)] = int(size)
        elif counts and not line.strip():
            break
    return counts


@pytest.mark.integration
def test_kfp_and_dvc_build_the_same_ctc_lm(local_run, tmp_path):
    """The DVC stage (`llm-asr train-ctc`, as dvc.yaml runs it) over the KFP run's own corpus and
    features builds an LM with the n-gram counts of the KFP train-ctc task's: one baseline everywhere."""
    from llm_asr.decoding.ctc import LM_FILE

    root, _ = local_run
    corpus = _task_dir(root, "prepare-data") / "corpus"
    assert sorted(p.parent.name for p in corpus.glob("mls_*/lm_text.txt")), "prepare-data wrote no lm_text.txt"
    work = tmp_path / "dvc"
    (work / "data").mkdir(parents=True)
    for name, src in {"corpus": corpus, "manifests": _task_dir(root, "prepare-data") / "manifests",
                      "features": _task_dir(root, "extract-features") / "features"}.items():
        (work / "data" / name).symlink_to(src, target_is_directory=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "llm_asr.cli", "train-ctc", "--profile", "micro", "--set", OVERRIDE,
         "--set", LM_TEXT, "--workdir", str(work)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    kfp_counts = _ngram_counts(_task_dir(root, "train-ctc") / "ctc_model" / LM_FILE)
    dvc_counts = _ngram_counts(work / "models" / "ctc" / LM_FILE)
    assert kfp_counts == dvc_counts and sorted(kfp_counts) == [1, 2, 3], (kfp_counts, dvc_counts)
