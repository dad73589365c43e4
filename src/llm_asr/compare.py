"""The ablation view over MLflow runs: `llm-asr compare [--experiment NAME] [--tag KEY=VALUE ...]`.

Selects the runs of an experiment by tags (or the given evaluation runs, with the runs
of their pipeline runs: how KFP's compare task names its grid, cached points included),
joins each system's stage-two training run
with its speech-LLM evaluation (same pipeline parent and config digest), and writes,
like the paper's ablation tables:
- `ablation.csv` / `ablation.md`: one row per system (stride, LoRA rank or frozen,
  projector, LLM, per-language and average WER, trainable parameters, training time),
  plus a stride x rank grid of average WER;
- `wer_vs_stride.png`, `wer_vs_rank.png`.
All are logged as artifacts of a `compare` run in the same experiment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from llm_asr import tracking
from llm_asr.config import LANGUAGES, Config
from llm_asr.errors import UserError
from llm_asr.paths import Paths

TRAIN_STAGE = "train_speech_llm"
EVAL_STAGE = "evaluate_speech_llm"


def _parse_tags(tags: list[str]) -> dict[str, str]:
    out = {}
    for item in tags:
        if "=" not in item:
            raise UserError(f"--tag '{item}' is not KEY=VALUE (e.g. --tag profile=micro)")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def select_runs(experiment: str, tags: dict[str, str]) -> list[Any]:
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no MLflow experiment '{experiment}' at {mlflow.get_tracking_uri()}")
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    clauses.append("attributes.status = 'FINISHED'")
    return mlflow.search_runs(
        [exp.experiment_id], filter_string=" and ".join(clauses), output_format="list", max_results=5000
    )


def select_evaluations(run_ids: list[str]) -> list[Any]:
    """RUN_IDS (evaluation runs) and the finished runs of their pipeline runs, where each one's
    stage-two training run is. An evaluation taken from KFP's cache belongs to an earlier pipeline
    run; its training run is found there all the same."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        evals = [client.get_run(r) for r in dict.fromkeys(run_ids)]
    except MlflowException as e:
        raise UserError(f"evaluation run not found at {mlflow.get_tracking_uri()}: {e.message}") from None
    found = {r.info.run_id: r for r in evals}
    for parent in {r.data.tags.get("mlflow.parentRunId") for r in evals} - {None}:
        siblings = mlflow.search_runs(
            search_all_experiments=True, output_format="list", max_results=5000,
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.stage = '{TRAIN_STAGE}' "
                          "and attributes.status = 'FINISHED'",
        )
        found.update({r.info.run_id: r for r in siblings})
    return list(found.values())


def _is_speech_llm_eval(run: Any) -> bool:
    t = run.data.tags
    stage = t.get("stage", "")
    return stage == EVAL_STAGE or (stage.startswith("evaluate") and t.get("system") == "speech-llm")


def trainable_params_m(train: Any) -> float | None:
    """Millions of trainable parameters of a stage-two run: projector + LoRA (+ encoder unless frozen)."""
    m = train.data.metrics
    if "trainable_params_m" in m:
        return m["trainable_params_m"]
    if "projector_params_m" not in m:
        return None
    frozen_encoder = train.data.params.get("speech_llm.freeze_encoder") != "False"
    encoder = 0.0 if frozen_encoder else m.get("encoder_params_m", 0.0)
    return round(m["projector_params_m"] + m.get("lora_params_m", 0.0) + encoder, 3)


def _row(train: Any, evaluation: Any) -> dict[str, Any]:
    tags, m = evaluation.data.tags, evaluation.data.metrics
    rank = int(tags.get("lora_rank", "0"))
    row: dict[str, Any] = {
        "stride_ms": int(tags.get("stride_ms", "0")),
        "lora_rank": rank,
        "llm_mode": "frozen" if rank == 0 else "lora",
        "projector": tags.get("projector", ""),
        "llm": tags.get("llm", ""),
        "average_wer": m.get("average_wer"),
    }
    for lang in LANGUAGES:
        if f"wer_{lang}" in m:
            row[f"wer_{lang}"] = m[f"wer_{lang}"]
    trainable = None
    minutes = None
    if train is not None:
        trainable = trainable_params_m(train)
        minutes = train.data.metrics.get("train_minutes")  # the trainer's summary
        if minutes is None and train.info.end_time:  # else the stage run's wall time
            minutes = round((train.info.end_time - train.info.start_time) / 60000, 2)
    row.update(trainable_params_m=trainable, train_minutes=minutes)
    row.update(eval_run=evaluation.info.run_id, train_run=train.info.run_id if train else "")
    return row


def build_table(runs: list[Any]) -> pd.DataFrame:
    """One row per system: the latest speech-LLM evaluation of each (parent, config) group."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):  # later runs win
        t = run.data.tags
        key = (t.get("mlflow.parentRunId", ""), t.get("config_digest", run.info.run_id))
        if t.get("stage") == TRAIN_STAGE:
            groups.setdefault(key, {})["train"] = run
        elif _is_speech_llm_eval(run) and "average_wer" in run.data.metrics:
            groups.setdefault(key, {})["eval"] = run
    rows = [_row(g.get("train"), g["eval"]) for g in groups.values() if "eval" in g]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).sort_values(["llm_mode", "stride_ms", "lora_rank"], ignore_index=True)
    lang_cols = [f"wer_{lang}" for lang in LANGUAGES if f"wer_{lang}" in table]
    rest = [c for c in table.columns if c not in lang_cols and c not in ("eval_run", "train_run")]
    return table[rest[:6] + lang_cols + rest[6:] + ["eval_run", "train_run"]]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"
    return str(v)


def to_markdown(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c not in ("eval_run", "train_run")]
    lines = ["## Ablation: stride x LoRA rank (WER %, test)", ""]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    grid = table.pivot_table(index="stride_ms", columns="lora_rank", values="average_wer", aggfunc="min")
    lines += ["", "### Average WER, stride (rows) x LoRA rank (columns; 0 = frozen LLM)", ""]
    lines.append("| stride_ms | " + " | ".join(str(c) for c in grid.columns) + " |")
    lines.append("|" + "---|" * (len(grid.columns) + 1))
    for stride, r in grid.iterrows():
        lines.append(f"| {stride} | " + " | ".join(_fmt(v) for v in r.tolist()) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, x: str, series: str, out: Path) -> Path:
    """Average WER against X, one line per value of SERIES."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for value, part in table.groupby(series):
        part = part.groupby(x, as_index=False)["average_wer"].min().sort_values(x)
        label = "frozen" if series == "lora_rank" and value == 0 else f"{series}={value}"
        ax.plot(part[x], part["average_wer"], marker="o", label=label)
    ax.set_xlabel({"stride_ms": "stride (ms)", "lora_rank": "LoRA rank (0 = frozen LLM)"}[x])
    ax.set_ylabel("average WER (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def run(
    cfg: Config,
    paths: Paths,
    experiment: str | None = None,
    tags: list[str] = [],  # noqa: B006 - the CLI's signature; never mutated
    out_dir: Path | None = None,
    run_ids: list[str] | None = None,
) -> dict[str, Any]:
    """Write the ablation table + plots and log them; returns {"systems", "out_dir", "files", "run_id"}.
    `run_ids` (evaluation runs) replaces the tag filter (`select_evaluations`)."""
    import mlflow

    if experiment:
        data = cfg.to_dict()
        data["tracking"]["experiment"] = experiment
        cfg = Config.model_validate(data)
    filters = _parse_tags(tags)
    tracking.setup(cfg, paths)
    runs = select_evaluations(run_ids) if run_ids else select_runs(cfg.tracking.experiment, filters)
    table = build_table(runs)
    if table.empty:
        raise UserError(
            f"no finished speech-LLM evaluation runs in experiment '{cfg.tracking.experiment}' "
            f"with tags {filters or '{}'}: run the pipeline (or `llm-asr evaluate`) first"
        )
    out = Path(out_dir) if out_dir else paths.reports / "compare"
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "ablation.csv", out / "ablation.md"]
    table.to_csv(files[0], index=False)
    files[1].write_text(to_markdown(table))
    files.append(plot(table, "stride_ms", "lora_rank", out / "wer_vs_stride.png"))
    files.append(plot(table, "lora_rank", "stride_ms", out / "wer_vs_rank.png"))
    extra = {"compare_filter": json.dumps({"run_ids": run_ids} if run_ids else filters, sort_keys=True),
             "compared_systems": str(len(table))}
    with tracking.stage_run(cfg, paths, "compare", extra_tags=extra) as active:
        for f in files:
            mlflow.log_artifact(str(f), "compare")
        best = table.loc[table["average_wer"].idxmin()]
        mlflow.log_metrics({"best_average_wer": float(best["average_wer"]), "systems": float(len(table))})
    return {
        "systems": len(table),
        "best": {"stride_ms": int(best["stride_ms"]), "lora_rank": int(best["lora_rank"]),
                 "average_wer": float(best["average_wer"])},
        "out_dir": str(out),
        "files": [str(f) for f in files],
        "run_id": active.info.run_id,
    }
