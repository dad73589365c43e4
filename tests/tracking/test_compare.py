"""`llm-asr compare` over a stride x rank grid of logged stage runs: table, CSV, plots, a compare run.

The grid's runs are logged the way the stages log them (`stage_run`, the trainer's summary
metrics, the evaluate stage's metric names), from the real micro model's training summary
and evaluation; each variant's WERs are offset so the table's layout can be checked.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from llm_asr import tracking
from llm_asr.cli import app
from llm_asr.config import LANGUAGES, load_config
from llm_asr.paths import Paths

pytestmark = pytest.mark.integration
GRID = [(80, 0), (80, 4), (160, 0), (160, 4), (240, 8)]  # (stride_ms, lora_rank); rank 0 = frozen LLM


def _offset(stride: int, rank: int) -> float:
    return stride / 10 - rank


def _log_system(cfg, paths, summary: dict, evaluation: dict, system: str = "speech-llm") -> None:
    import mlflow

    with tracking.stage_run(cfg, paths, "train_speech_llm"):
        lora = summary["lora_params_m"] * cfg.speech_llm.lora.rank / 4  # LoRA size grows with the rank
        mlflow.log_metrics({**{k: float(v) for k, v in summary.items() if isinstance(v, (int, float))},
                            "lora_params_m": lora})
    off = _offset(cfg.speech_llm.stride_ms, cfg.speech_llm.lora.rank)
    with tracking.stage_run(cfg, paths, f"evaluate_{system.replace('-', '_')}", {"system": system}):
        mlflow.log_metric("average_wer", evaluation["average_wer"] + off)
        mlflow.log_metrics({f"wer_{lang}": m["wer"] + off for lang, m in evaluation["languages"].items()})


@pytest.fixture
def grid_runs(micro_registry, mlflow_store, tmp_path, monkeypatch):
    _, micro, _ = micro_registry
    summary = json.loads((micro.speech_llm_model / "train_summary.json").read_text())
    evaluation = json.loads((micro.reports / "speech_llm" / "metrics.json").read_text())
    paths = Paths.at(tmp_path)
    monkeypatch.setenv("LLM_ASR_PIPELINE_RUN", "ablation-1")  # one parent, as in the KFP ablation
    for stride, rank in GRID:
        cfg = load_config("micro", [f"speech_llm.stride_ms={stride}", f"speech_llm.lora.rank={rank}"])
        _log_system(cfg, paths, summary, evaluation)
    _log_system(load_config("micro"), paths, summary, evaluation, system="ctc")  # not a speech-LLM row
    monkeypatch.setenv("LLM_ASR_PIPELINE_RUN", "other-profile")
    _log_system(load_config(), paths, summary, evaluation)  # the default profile: filtered out by tag
    return paths, summary, evaluation


def test_compare_writes_the_ablation_table_and_plots(grid_runs, tmp_path):
    import mlflow

    paths, summary, evaluation = grid_runs
    out = tmp_path / "cmp"
    args = ["compare", "--profile", "micro", "--workdir", str(paths.workdir), "--tag", "profile=micro",
            "--out-dir", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    table = pd.read_csv(out / "ablation.csv")
    assert sorted(zip(table.stride_ms, table.lora_rank)) == sorted(GRID)
    for _, row in table.iterrows():
        off = _offset(row.stride_ms, row.lora_rank)
        assert row.average_wer == pytest.approx(evaluation["average_wer"] + off)
        assert row.llm_mode == ("frozen" if row.lora_rank == 0 else "lora")
        for lang in evaluation["languages"]:
            assert row[f"wer_{lang}"] == pytest.approx(evaluation["languages"][lang]["wer"] + off)
        lora = summary["lora_params_m"] * row.lora_rank / 4
        assert row.trainable_params_m == pytest.approx(
            summary["projector_params_m"] + lora + summary["encoder_params_m"], abs=1e-3)
        assert row.train_minutes == pytest.approx(summary["train_minutes"])
    assert set(table.columns) >= {f"wer_{lang}" for lang in LANGUAGES if lang in evaluation["languages"]}

    md = (out / "ablation.md").read_text()
    assert "| stride_ms | 0 | 4 | 8 |" in md  # the stride x rank grid
    grid = md[md.index("### Average WER"):].splitlines()
    grid_80 = [line for line in grid if line.startswith("| 80 |")]
    wer = evaluation["average_wer"]
    assert grid_80 == [f"| 80 | {wer + 8:.2f} | {wer + 4:.2f} | - |"]
    for png in ("wer_vs_stride.png", "wer_vs_rank.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    answer = json.loads(result.output[result.output.index("{"):])
    cmp_run = mlflow.get_run(answer["run_id"])
    assert cmp_run.data.tags["stage"] == "compare" and cmp_run.data.metrics["systems"] == len(GRID)
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(answer["run_id"], "compare")}
    names = ("ablation.csv", "ablation.md", "wer_vs_stride.png", "wer_vs_rank.png")
    assert logged == {f"compare/{n}" for n in names}


def test_compare_without_matching_runs_says_so(mlflow_store, tmp_path):
    args = ["compare", "--profile", "micro", "--workdir", str(tmp_path), "--tag", "profile=nothing"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "no finished speech-LLM evaluation runs" in result.output
