"""Reproducibility of the micro DAG through DVC, in throwaway clones of this repository.

1. `dvc repro` (micro) in clone A, then `dvc repro` again: nothing re-runs.
2. `dvc push` to a local directory remote; clone B (git clone of A) + `dvc pull`: `dvc status`
   is clean, `dvc repro` re-runs nothing, and the metrics are A's.
3. `dvc repro --force` in B (a second run from scratch, at another path): metrics, manifests,
   features and model weights are identical to A's, byte for byte.
Deterministic settings (configs/micro.yaml): fixed seed, fp32 (no timing-based bf16 probe), an
lr schedule driven by steps (no time/CPU budget), dither-free fbank, a sorted corpus, and
workdir-relative manifest paths (so the bytes do not depend on where the clone lives).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_asr.config import REPO_ROOT

pytestmark = pytest.mark.integration
SAME = [  # files a rerun must reproduce byte for byte
    "reports/metrics.json", "reports/ctc_train/dev_metrics.json",
    "data/manifests/cuts_train.jsonl.gz", "data/features/cuts_train.jsonl.gz", "data/features/cmvn.json",
    "models/ctc/model.pt", "models/speech_llm/trained.pt", "models/speech_llm/adapter/adapter_model.safetensors",
]


def _sh(cwd: Path, *cmd: str, timeout: int = 900) -> str:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "LLM_ASR_PIPELINE", "LLM_ASR_PARENT", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def _nothing_to_run(clone: Path) -> None:
    assert json.loads(_sh(clone, "dvc", "status", "--json").strip().splitlines()[-1]) == {}
    out = _sh(clone, "dvc", "repro")
    assert "Running stage" not in out, out[-2000:]


def _numbers(metrics: dict) -> dict:
    """The metrics without the paths they were computed at."""
    return {system: {k: v for k, v in m.items() if k not in ("data_dir", "model")} for system, m in metrics.items()}


@pytest.mark.timeout(1800)  # two micro DAG runs + DVC: ~4 min on 2 idle cores, far more on a busy box
def test_micro_dag_is_reproducible_and_pulls_clean(tmp_path):
    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    _sh(tmp_path, "git", "clone", "-q", str(REPO_ROOT), str(a))
    params = (a / "params.yaml").read_text()
    assert "\nprofile: default\n" in params
    (a / "params.yaml").write_text(params.replace("\nprofile: default\n", "\nprofile: micro\n"))
    _sh(a, "dvc", "repro")
    _nothing_to_run(a)  # 1. `dvc repro` right after a full run

    _sh(a, "dvc", "remote", "add", "-d", "local", str(remote))
    _sh(a, "dvc", "push")
    _sh(a, "git", "add", "-A")
    _sh(a, "git", "commit", "-qm", "micro run")
    _sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    _sh(b, "dvc", "pull")
    _nothing_to_run(b)  # 2. a fresh clone + pull has every output
    for name in SAME:
        assert (b / name).read_bytes() == (a / name).read_bytes(), name

    _sh(b, "dvc", "repro", "--force")  # 3. from scratch again, at another path
    assert _numbers(json.loads((b / "reports/metrics.json").read_text())) == _numbers(
        json.loads((a / "reports/metrics.json").read_text()))
    for name in SAME[1:]:
        assert (b / name).read_bytes() == (a / name).read_bytes(), name
    assert _data_hashes(b) == _data_hashes(a)  # corpus audio, manifests, feature arrays: same bytes


def _data_hashes(clone: Path) -> dict[str, str]:
    """DVC's hashes of the data outputs, from dvc.lock (models also hold timings, so not those)."""
    import yaml

    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])
            if o["path"].startswith("data/")}
