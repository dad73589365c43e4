"""The DVC experiment grid: `dvc exp run --queue -S ...` over stride/rank on micro, 2 experiments.

Queued experiments run from a git snapshot, so the test works in a temporary clone:
its params.yaml is the micro config (so `-S` values are not overridden by a profile
file), the shared stages run once and are committed in dvc.lock, and each experiment
reruns only stage two onward (`report` target), restoring the rest from the DVC cache.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from llm_asr.config import load_config

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
# keep it lean: two languages, two test utterances each
LEAN = ["data.languages=[english, german]", "evaluate.max_utterances_per_language=2"]


def sh(*cmd: str, cwd: Path, env: dict, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _experiments(show: list) -> list[dict]:
    """Every experiment (not the workspace or baseline) in `dvc exp show --json`: {name, params, metrics}."""
    found = []

    def walk(node, inside_experiments: bool):
        if isinstance(node, dict):
            data = node.get("data")
            metrics = (data or {}).get("metrics", {}).get("reports/metrics.json", {}).get("data")
            if inside_experiments and metrics and node.get("name"):
                found.append({"name": node["name"], "params": data["params"]["params.yaml"]["data"], "metrics": metrics})
            for key, value in node.items():
                walk(value, inside_experiments or key == "experiments")
        elif isinstance(node, list):
            for value in node:
                walk(value, inside_experiments)

    walk(show, False)
    return found


@pytest.mark.integration
def test_dvc_experiment_grid_lists_wer_per_experiment(tmp_path):
    repo = tmp_path / "repo"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "LLM_ASR_CACHE": str(REPO / ".cache"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git", "clone", "-q", str(REPO), str(repo), cwd=tmp_path, env=env)
    params = load_config("micro", LEAN).to_dict()
    params["profile"] = "default"  # the micro values live in params.yaml itself
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (repo / ".dvc").is_dir():
        sh("dvc", "init", "-q", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "micro params", cwd=repo, env=env)
    start = time.time()
    sh("dvc", "repro", "evaluate@ctc", "evaluate@ctc_greedy", "evaluate@ctc_ood", "evaluate@ctc_greedy_ood",
       "evaluate_whisper", cwd=repo, env=env, timeout=900)  # the shared stages, once
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "shared stages", cwd=repo, env=env)

    sh("dvc", "exp", "run", "--queue", "-S", "speech_llm.stride_ms=80,160", "-S", "speech_llm.lora.rank=0",
       "report", cwd=repo, env=env)
    sh("dvc", "queue", "start", "-j", "1", cwd=repo, env=env)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = sh("dvc", "queue", "status", cwd=repo, env=env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    failed = [line.split()[0] for line in status.splitlines() if "Failed" in line]
    assert not failed, status + sh("dvc", "queue", "logs", failed[0], cwd=repo, env=env)[-4000:]

    show = sh("dvc", "exp", "show", "--json", cwd=repo, env=env)
    experiments = _experiments(json.loads(show))
    assert len(experiments) == 2, show[:3000]
    grid = {(e["params"]["speech_llm"]["stride_ms"], e["params"]["speech_llm"]["lora"]["rank"]) for e in experiments}
    assert grid == {(80, 0), (160, 0)}
    for e in experiments:
        assert e["metrics"]["speech-llm"]["average_wer"] >= 0
        assert e["metrics"]["ctc"]["average_wer"] >= 0
    table = sh("dvc", "exp", "show", "--md", "--only-changed", cwd=repo, env=env)
    assert "average_wer" in table
    print(f"DVC grid (shared stages + 2 experiments): {time.time() - start:.0f} s")
    shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)
