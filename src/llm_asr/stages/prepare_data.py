"""Stage: build (synthetic) or download (mls) the corpus in MLS layout, then lhotse manifests.

Run: `llm-asr prepare-data [--profile P] [--set KEY=VALUE] [--workdir DIR]`
Writes `data/corpus/mls_<language>/...`, `data/manifests/` (per-language recordings and
supervisions, `cuts_<split>.jsonl.gz`) and `reports/data_report.json` (counts and hours
per language and split, every skipped item with its reason).
"""

from __future__ import annotations

import json
import time

from llm_asr import tracking
from llm_asr.config import Config
from llm_asr.data.manifests import summarize, write_manifests
from llm_asr.data.mls import read_mls_dir
from llm_asr.paths import Paths

SPLITS = ("train", "dev", "test")


def build_corpus(cfg: Config, paths: Paths) -> dict:
    """Fill paths.corpus from the configured source; returns source-specific facts."""
    if cfg.data.source == "synthetic":
        from llm_asr.data.synthetic import build_synthetic_corpus

        return build_synthetic_corpus(cfg, paths.corpus, paths.cache)
    from llm_asr.data.mls import fetch_mls

    return fetch_mls(cfg, paths.corpus, paths.cache)


def make_manifests(cfg: Config, paths: Paths) -> dict:
    """Validate every split of the corpus and write manifests; returns the report body."""
    import shutil

    shutil.rmtree(paths.manifests, ignore_errors=True)
    splits: dict[str, dict] = {}
    skipped: list[dict] = []
    for split in SPLITS:
        items, sk = read_mls_dir(
            paths.corpus, split, cfg.data.languages, cfg.data.num_workers, cfg.data.max_utterance_s
        )
        write_manifests(items, split, paths.manifests, base=paths.workdir)
        splits[split] = summarize(items)
        skipped += sk
    languages = {
        lang: {split: splits[split].get(lang, {"utterances": 0, "hours": 0.0}) for split in SPLITS}
        for lang in cfg.data.languages
    }
    totals = {
        split: {
            "utterances": sum(v["utterances"] for v in splits[split].values()),
            "hours": round(sum(v["hours"] for v in splits[split].values()), 4),
        }
        for split in SPLITS
    }
    return {"languages": languages, "total": totals, "num_skipped": len(skipped), "skipped": skipped}


def run(cfg: Config, paths: Paths) -> dict:
    """Corpus + manifests + data_report.json; returns the report without the skipped list."""
    with tracking.stage_run(cfg, paths, "prepare_data"):
        import mlflow

        t0 = time.time()
        source_facts = build_corpus(cfg, paths)
        t1 = time.time()
        report = {"source": cfg.data.source, **make_manifests(cfg, paths)}
        if "voices" in source_facts:  # the variants each split speaks with, across all languages
            report["voices"] = source_facts.pop("voices")
        report["build"] = {
            **source_facts,
            "corpus_seconds": round(t1 - t0, 2),
            "manifest_seconds": round(time.time() - t1, 2),
        }
        paths.reports.mkdir(parents=True, exist_ok=True)
        out = paths.reports / "data_report.json"
        out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        for split, tot in report["total"].items():
            mlflow.log_metric(f"{split}_utterances", tot["utterances"])
            mlflow.log_metric(f"{split}_hours", tot["hours"])
        for lang, splits in report["languages"].items():
            for split, stats in splits.items():
                mlflow.log_metric(f"{lang}_{split}_hours", stats["hours"])
        mlflow.log_metric("skipped", report["num_skipped"])
        mlflow.log_artifact(str(out))
    return {k: v for k, v in report.items() if k != "skipped"}
