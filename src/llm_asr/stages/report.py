"""Merge both systems' test metrics into reports/metrics.json and a results table.

Run: `llm-asr report [--workdir W]`. Reads reports/ctc/metrics.json and
reports/speech_llm/metrics.json; writes reports/metrics.json = {"ctc": ..., "speech-llm": ...}
and reports/results.md (per-language WER/CER of both systems side by side).
"""

from __future__ import annotations

import json
from typing import Any

from llm_asr import tracking
from llm_asr.config import Config
from llm_asr.errors import UserError
from llm_asr.evaluation import comparison_table, markdown_table
from llm_asr.paths import Paths

SYSTEMS = {"ctc": "ctc", "speech-llm": "speech_llm"}


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Returns the merged metrics dict."""
    merged: dict[str, Any] = {}
    for system, folder in SYSTEMS.items():
        path = paths.reports / folder / "metrics.json"
        if not path.is_file():
            raise UserError(f"no {path}: run `llm-asr evaluate --system {system}` first")
        merged[system] = json.loads(path.read_text())
    paths.reports.mkdir(parents=True, exist_ok=True)
    (paths.reports / "metrics.json").write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    ratio = merged["speech-llm"]["average_wer"] / max(merged["ctc"]["average_wer"], 1e-9)
    lines = [
        "# Results (test split)",
        "",
        f"Profile `{cfg.profile}`. Average WER is the unweighted mean over languages; WER/CER in percent.",
        "",
        comparison_table(merged),
        f"Speech-LLM / CTC average WER: **{ratio:.3f}x** (the paper's multilingual result: 0.82x).",
        "",
        *(markdown_table(m) for m in merged.values()),
    ]
    (paths.reports / "results.md").write_text("\n".join(lines))
    with tracking.stage_run(cfg, paths, "report"):
        import mlflow

        mlflow.log_metrics({f"{s.replace('-', '_')}_average_wer": m["average_wer"] for s, m in merged.items()})
        mlflow.log_metric("wer_ratio_speech_llm_to_ctc", ratio)
        mlflow.log_artifact(str(paths.reports / "results.md"))
    return merged
