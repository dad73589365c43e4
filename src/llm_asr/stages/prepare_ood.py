"""Stage: the out-of-domain test set, Debian handbook sentences spoken by the test voices, in MLS layout.

Run: `llm-asr prepare-ood [--profile P] [--set KEY=VALUE] [--workdir DIR]`
Writes `data/ood/mls_<language>/test/{transcripts.txt,audio/...}` + `mls_<language>/metainfo.txt`
and `reports/ood_report.json`; score it with `llm-asr evaluate --data-dir data/ood --split test`.

The text is the Debian Administrator's Handbook (`data.ood.source`), cleaned by the corpus's own
rules (data/text.py) and held to its word range (`data.synthetic.min_words..max_words`); a sentence
whose normalized text is also a LibreOffice sentence of any language is dropped, so nothing here is in
train, dev, test or the LM text. The voices are exactly the corpus's test voices (`make_voices(...)
["test"]`: variants from the test pool, never heard in train or dev), so the OOD and in-domain test
WERs differ by their text alone. Deterministic for a seed: a rerun gives byte-identical files.
"""

from __future__ import annotations

import json
import random
import shutil
import time

from llm_asr import tracking
from llm_asr.config import Config
from llm_asr.errors import UserError
from llm_asr.paths import Paths

TITLE = "Debian Administrator's Handbook"  # metainfo.txt's TITLE column
# OOD books are numbered from here, so an OOD id never equals a corpus id of the same test speaker
# (the corpus's books count from 00 and stay below 50 unless one speaker reads over 2,500 utterances)
FIRST_BOOK = 50


def select_sentences(
    cfg: Config, language: str, candidates: list[str], known: set[str]
) -> tuple[list[str], dict]:
    """`data.ood.per_language` sentences of `candidates` (seeded shuffle) within the word range and not
    in `known` (normalized LibreOffice sentences); returns them and the counts/overlaps for the report."""
    from llm_asr.data.text import drop_known, normalize_transcript

    syn, need = cfg.data.synthetic, cfg.data.ood.per_language
    lengths = [len(normalize_transcript(s).split()) for s in candidates]
    in_range = [s for s, n in zip(candidates, lengths) if syn.min_words <= n <= syn.max_words]
    unseen, overlap = drop_known(in_range, known)
    if len(unseen) < need:
        raise UserError(
            f"{language}: only {len(unseen)} {cfg.data.ood.source} sentences with {syn.min_words}-"
            f"{syn.max_words} words and not in the LibreOffice corpus, {need} needed; "
            "lower data.ood.per_language"
        )
    random.Random(f"ood-sentences-{cfg.seed}-{language}").shuffle(unseen)
    counts = {"clean": len(candidates), "in_word_range": len(in_range), "overlap_libreoffice": len(overlap),
              "usable": len(unseen)}  # fmt: skip
    skipped = [{"language": language, "text": s, "reason": "also a LibreOffice sentence"} for s in overlap]
    return unseen[:need], {"counts": counts, "skipped": skipped}


def build_ood(cfg: Config, paths: Paths) -> dict:
    """Write paths.ood; returns the facts for the report (sentence counts, voices, overlaps)."""
    from llm_asr.data.parallel import num_workers
    from llm_asr.data.synthetic import make_voices, plan_test_set, synthesize_all, write_text_files
    from llm_asr.data.text import (handbook_package, handbook_sentences_for_all, normalize_transcript,
                                   sentences_for_all)

    syn, languages = cfg.data.synthetic, cfg.data.languages
    workers = num_workers(cfg.data.num_workers)
    libreoffice = sentences_for_all(languages, paths.cache, workers)
    known = {normalize_transcript(s) for sents in libreoffice.values() for s in sents}
    candidates = handbook_sentences_for_all(languages, paths.cache, workers)
    plan, sentences, voices, skipped = [], {}, {}, []
    for language in languages:
        chosen, facts = select_sentences(cfg, language, candidates[language], known)
        test_voices = make_voices(language, syn.train_speakers, syn.eval_speakers, cfg.seed)["test"]
        plan += plan_test_set(language, chosen, test_voices, FIRST_BOOK)
        sentences[language], skipped = facts["counts"], skipped + facts["skipped"]
        voices[language] = [f"{v.speaker}: {v.describe()}" for v in test_voices]
    shutil.rmtree(paths.ood, ignore_errors=True)
    samples = synthesize_all(plan, paths.ood, workers)
    write_text_files(paths.ood, plan, samples, title=TITLE, splits=("test",))
    return {
        "text_package": handbook_package(paths.cache),
        "sentences": sentences,
        "voices": voices,
        "variants": sorted({u.voice.variant for u in plan}),
        "workers": workers,
        "skipped": skipped,
    }


def run(cfg: Config, paths: Paths) -> dict:
    """data/ood + reports/ood_report.json; returns the report without the skipped list.

    Report: {"source", "text_package", "languages": {lang: {"utterances", "hours"}}, "total",
    "sentences": {lang: {"clean", "in_word_range", "overlap_libreoffice", "usable"}}, "voices",
    "variants", "num_skipped", "skipped": [{"language", "text" or "id", "reason"}], "build"}.
    """
    from llm_asr.data.manifests import summarize
    from llm_asr.data.mls import read_mls_dir

    with tracking.stage_run(cfg, paths, "prepare_ood"):
        import mlflow

        t0 = time.time()
        facts = build_ood(cfg, paths)
        t1 = time.time()
        data = cfg.data
        items, bad = read_mls_dir(paths.ood, "test", data.languages, data.num_workers, data.max_utterance_s)
        languages = summarize(items)
        skipped = facts.pop("skipped") + bad
        report = {
            "source": cfg.data.ood.source,
            "text_package": facts.pop("text_package"),
            "languages": languages,
            "total": {"utterances": len(items), "hours": round(sum(it.duration for it in items) / 3600, 4)},
            **facts,
            "num_skipped": len(skipped),
            "skipped": skipped,
            "build": {"corpus_seconds": round(t1 - t0, 2), "check_seconds": round(time.time() - t1, 2)},
        }
        paths.reports.mkdir(parents=True, exist_ok=True)
        out = paths.reports / "ood_report.json"
        out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        total = report["total"]
        mlflow.log_metrics({"ood_utterances": total["utterances"], "ood_hours": total["hours"],
                            "ood_skipped": report["num_skipped"]})  # fmt: skip
        mlflow.log_metrics({f"ood_{lang}_hours": v["hours"] for lang, v in languages.items()})
        mlflow.log_artifact(str(out))
    return {k: v for k, v in report.items() if k != "skipped"}
