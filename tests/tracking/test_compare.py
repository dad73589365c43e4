"""`llm-asr compare`: the table over real micro stage runs, and the stride x rank layout of a grid.

A real grid would train one micro speech-LLM per cell (~40 s each on 2 shared cores), so the
grid test logs its runs the way the stages log them (`stage_run`, the trainer's summary metric
names, the evaluate stage's metric names) with stand-in numbers: it checks that the table
joins, sorts and lays out what was logged, and measures nothing. The real-run test reads the
micro registry's store, where the evaluate stage logged the micro speech-LLM's evaluation.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from llm_asr import tracking
from llm_asr.cli import app
from llm_asr.config import load_config
from llm_asr.paths import Paths

pytestmark = pytest.mark.integration
# stand-ins, not measurements: (stride_ms, lora_rank) -> (average WER, {language: WER}); rank 0 = frozen LLM
GRID = {
    (80, 0): (41.0, {"german": 40.0, "polish": 42.0}),
    (80, 4): (37.5, {"german": 35.0, "polish": 40.0}),
    (160, 0): (44.0, {"german": 43.0, "polish": 45.0}),
    (160, 4): (39.0, {"german": 38.0, "polish": 40.0}),
    (240, 8): (36.25, {"german": 36.0, "polish": 36.5}),
}
TRAIN = {"projector_params_m": 0.05, "encoder_params_m": 0.02, "train_minutes": 0.5}  # stand-ins too


def _lora_params_m(rank: int) -> float:
    return 0.01 * rank


def _compare(workdir, out, *extra: str) -> tuple[pd.DataFrame, dict]:
    args = ["compare", "--profile", "micro", "--workdir", str(workdir), "--tag", "profile=micro",
            "--out-dir", str(out), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return pd.read_csv(out / "ablation.csv"), json.loads(result.output[result.output.index("{"):])


def _log_system(cfg, paths, wer: float, per_language: dict[str, float], system: str = "speech-llm") -> None:
    import mlflow

    with tracking.stage_run(cfg, paths, "train_speech_llm"):
        mlflow.log_metrics({**TRAIN, "lora_params_m": _lora_params_m(cfg.speech_llm.lora.rank)})
    with tracking.stage_run(cfg, paths, f"evaluate_{system.replace('-', '_')}", {"system": system}):
        mlflow.log_metric("average_wer", wer)
        mlflow.log_metrics({f"wer_{lang}": v for lang, v in per_language.items()})


@pytest.fixture
def grid_runs(mlflow_store, tmp_path, monkeypatch):
    paths = Paths.at(tmp_path)
    monkeypatch.setenv("LLM_ASR_PIPELINE_RUN", "ablation-1")  # one parent, as in the KFP ablation
    for (stride, rank), (wer, per_language) in GRID.items():
        cfg = load_config("micro", [f"speech_llm.stride_ms={stride}", f"speech_llm.lora.rank={rank}"])
        _log_system(cfg, paths, wer, per_language)
    _log_system(load_config("micro"), paths, 10.0, {"german": 10.0}, system="ctc")  # not a speech-LLM row
    monkeypatch.setenv("LLM_ASR_PIPELINE_RUN", "other-profile")
    _log_system(load_config(), paths, 5.0, {"german": 5.0})  # the default profile: filtered out by tag
    return paths


def test_compare_lays_out_the_logged_grid(grid_runs, tmp_path):
    import mlflow

    micro, out = load_config("micro"), tmp_path / "cmp"
    table, answer = _compare(grid_runs.workdir, out)
    # frozen LLM first, then by stride and rank
    assert list(zip(table.stride_ms, table.lora_rank)) == [(80, 0), (160, 0), (80, 4), (160, 4), (240, 8)]
    for _, row in table.iterrows():
        wer, per_language = GRID[(row.stride_ms, row.lora_rank)]
        assert row.average_wer == wer and {lang: row[f"wer_{lang}"] for lang in per_language} == per_language
        assert row.llm_mode == ("frozen" if row.lora_rank == 0 else "lora")
        assert (row.projector, row.llm) == (micro.speech_llm.projector, "random-tiny-llama")
        encoder = 0.0 if micro.speech_llm.freeze_encoder else TRAIN["encoder_params_m"]  # counted if trained
        expected = TRAIN["projector_params_m"] + _lora_params_m(row.lora_rank) + encoder
        assert row.trainable_params_m == pytest.approx(expected)
        assert row.train_minutes == TRAIN["train_minutes"]
    assert answer["best"] == {"stride_ms": 240, "lora_rank": 8, "average_wer": 36.25}

    md = (out / "ablation.md").read_text()
    grid = md[md.index("### Average WER"):].splitlines()
    assert "| stride_ms | 0 | 4 | 8 |" in grid
    assert [line for line in grid if line.startswith("| 80 |")] == ["| 80 | 41.00 | 37.50 | - |"]
    for png in ("wer_vs_stride.png", "wer_vs_rank.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cmp_run = mlflow.get_run(answer["run_id"])
    assert cmp_run.data.tags["stage"] == "compare" and cmp_run.data.metrics["systems"] == len(GRID)
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(answer["run_id"], "compare")}
    names = ("ablation.csv", "ablation.md", "wer_vs_stride.png", "wer_vs_rank.png")
    assert logged == {f"compare/{n}" for n in names}


def test_compare_over_the_micro_runs_reports_their_evaluation(micro_registry, tmp_path):
    """The micro registry's store holds the evaluate stage's runs of the micro speech-LLM and its CTC
    (its training ran in another workdir's store): one row, with the evaluate JSON's WERs."""
    import mlflow

    cfg, micro, _ = micro_registry
    # compare logs a run: a copy, not the shared store (and as the fixture left it, before other tests)
    shutil.copyfile(micro.workdir / "mlflow_at_registration.db", tmp_path / "mlflow.db")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table, _ = _compare(tmp_path, tmp_path / "cmp", "--set", f"tracking.tracking_uri={store}")
    evaluation = json.loads((micro.reports / "speech_llm" / "metrics.json").read_text())
    rows = [r for _, r in table.iterrows()]
    assert len(rows) == 1, table.to_string()
    (row,) = rows
    assert (row.stride_ms, row.lora_rank) == (cfg.speech_llm.stride_ms, cfg.speech_llm.lora.rank)
    assert (row.llm_mode, row.projector, row.llm) == ("lora", cfg.speech_llm.projector, "random-tiny-llama")
    assert row.average_wer == pytest.approx(evaluation["average_wer"])
    assert {lang: row[f"wer_{lang}"] for lang in evaluation["languages"]} == pytest.approx(
        {lang: m["wer"] for lang, m in evaluation["languages"].items()})
    assert pd.isna(row.trainable_params_m) and pd.isna(row.train_run)  # no training run in this store
    client = mlflow.MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (evaluation_run,) = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate_speech_llm'")
    assert row.eval_run == evaluation_run.info.run_id


def test_compare_without_matching_runs_says_so(mlflow_store, tmp_path):
    args = ["compare", "--profile", "micro", "--workdir", str(tmp_path), "--tag", "profile=nothing"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "no finished speech-LLM evaluation runs" in result.output


def test_compare_by_run_ids_finds_cached_grid_points_in_earlier_runs(mlflow_store, tmp_path, monkeypatch):
    """KFP's compare task names the grid's evaluation runs (each report artifact records its MLflow run);
    a point taken from cache names an earlier pipeline run's evaluation, whose training run is found there."""
    import mlflow

    from llm_asr import compare

    paths, evals = Paths.at(tmp_path), []
    for run_name, (stride, rank) in (("ablation-1", (80, 0)), ("ablation-2", (80, 4))):
        monkeypatch.setenv("LLM_ASR_PIPELINE_RUN", run_name)
        wer, per_language = GRID[(stride, rank)]
        _log_system(load_config("micro", [f"speech_llm.stride_ms={stride}", f"speech_llm.lora.rank={rank}"]),
                    paths, wer, per_language)
        evals.append(mlflow.last_active_run().info.run_id)
    monkeypatch.setenv("LLM_ASR_PIPELINE_RUN", "ablation-1")
    _log_system(load_config("micro", ["speech_llm.stride_ms=160"]), paths, 44.0, {"german": 44.0})  # not named
    answer = compare.run(load_config("micro"), paths, run_ids=evals, out_dir=tmp_path / "cmp")
    table = pd.read_csv(tmp_path / "cmp" / "ablation.csv")
    assert answer["systems"] == 2 and list(zip(table.stride_ms, table.lora_rank)) == [(80, 0), (80, 4)]
    assert sorted(table.eval_run) == sorted(evals)
    assert table.train_minutes.tolist() == [TRAIN["train_minutes"]] * 2  # each joined with its own training run
    assert table.train_run.notna().all()
