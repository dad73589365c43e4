"""Per-language WER/CER of a system on any MLS-layout directory (DESIGN section 5 contract).

Run: `llm-asr evaluate --system ctc|speech-llm|whisper [--data-dir DIR] [--model PATH|models:/...]
[--split test] [--out FILE]`. Writes FILE (default reports/<system>/metrics.json) plus
wer.md, wer.png and hyps.jsonl (one line per scored utterance: id, language, ref, hyp) beside it.
Unreadable utterances are skipped, counted and listed in skipped.json, never fatal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llm_asr import tracking
from llm_asr.config import Config
from llm_asr.evaluation import bar_chart, markdown_table, metrics_json
from llm_asr.paths import Paths


def _limit(items: list, per_language: int) -> list:
    if per_language <= 0:
        return items
    seen: dict[str, int] = {}
    out = []
    for it in items:
        if seen.get(it.language, 0) < per_language:
            seen[it.language] = seen.get(it.language, 0) + 1
            out.append(it)
    return out


def transcribe_items(recognizer: Any, items: list, batch_size: int) -> tuple[list[dict], list]:
    """One {"id", "language", "ref", "hyp"} per decoded item, and the items whose audio could not be read."""
    from llm_asr.data.audio import load_audio
    from llm_asr.errors import UserError

    decoded: list[dict] = []
    bad: list[dict] = []
    items = sorted(items, key=lambda it: it.duration)  # similar lengths in a batch
    bar = tqdm(total=len(items), desc="evaluate", unit="utt")
    for start in range(0, len(items), batch_size):
        chunk, waves = [], []
        for it in items[start : start + batch_size]:
            try:
                waves.append(load_audio(it.audio_path))
                chunk.append(it)
            except (UserError, OSError, ValueError) as e:  # BadAudio is a UserError
                bad.append({"id": it.id, "language": it.language, "reason": str(e)[:200]})
        # a recognizer that can be told the language (whisper.language: given) is told each item's
        told = {"languages": [it.language for it in chunk]} if getattr(recognizer, "wants_languages", False) else {}
        for it, hyp in zip(chunk, recognizer.transcribe(waves, **told) if waves else []):
            decoded.append({"id": it.id, "language": it.language, "ref": it.text, "hyp": hyp})
        bar.update(len(items[start : start + batch_size]))
    bar.close()
    return sorted(decoded, key=lambda d: (d["language"], d["id"])), bad


def by_language(decoded: list[dict]) -> dict[str, tuple[list[str], list[str]]]:
    """{language: (refs, hyps)} of transcribe_items' records, as metrics_json takes them."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for d in decoded:
        refs, hyps = out.setdefault(d["language"], ([], []))
        refs.append(d["ref"])
        hyps.append(d["hyp"])
    return out


def read_hyps(path: Path) -> list[dict]:
    """hyps.jsonl as evaluate writes it."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run(
    cfg: Config,
    paths: Paths,
    data_dir: Path | None = None,
    model: str | None = None,
    system: str = "speech-llm",
    split: str | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Score `system` (model dir or URI) on `data_dir`; returns the metrics JSON written to `out`."""
    from llm_asr.data.mls import read_mls_dir
    from llm_asr.errors import UserError
    from llm_asr.inference import load_recognizer

    split = split or cfg.evaluate.split
    data_dir = Path(data_dir) if data_dir else paths.corpus
    out = Path(out) if out else paths.reports / system.replace("-", "_") / "metrics.json"
    with tracking.stage_run(cfg, paths, f"evaluate_{system.replace('-', '_')}", {"system": system}):
        import mlflow

        languages = cfg.data.languages if data_dir == paths.corpus else None
        items, skipped = read_mls_dir(data_dir, split, languages, max_duration_s=cfg.data.max_utterance_s)
        items = _limit(items, cfg.evaluate.max_utterances_per_language)
        recognizer = load_recognizer(cfg, paths, system, model)
        decoded, bad = transcribe_items(recognizer, items, cfg.decoding.batch_size)
        by_lang = by_language(decoded)
        if not by_lang:
            raise UserError(f"{data_dir}: no '{split}' utterance could be decoded ({len(bad)} unreadable)")
        # a recognizer that names its own default model (whisper: the packaged Whisper base) says so
        default = getattr(recognizer, "source", None) or f"models:/{cfg.tracking.registered_model}@champion"
        result = metrics_json(system, str(model or default), by_lang)
        result.update(split=split, data_dir=str(data_dir), skipped=len(skipped) + len(bad),
                      max_utterances_per_language=cfg.evaluate.max_utterances_per_language,
                      decoding=getattr(recognizer, "decoding", "unknown"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        (out.parent / "wer.md").write_text(markdown_table(result))
        (out.parent / "hyps.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in decoded))
        bar_chart(result, out.parent / "wer.png")
        if skipped or bad:
            (out.parent / "skipped.json").write_text(json.dumps(skipped + bad, indent=1, default=str))
        mlflow.log_metrics({"average_wer": result["average_wer"], "skipped": result["skipped"]})
        mlflow.log_metrics({f"{k}_{lang}": v[k] for lang, v in result["languages"].items() for k in ("wer", "cer")})
        for f in (out, out.parent / "wer.md", out.parent / "wer.png", out.parent / "hyps.jsonl"):
            mlflow.log_artifact(str(f), artifact_path=f"evaluate_{system.replace('-', '_')}")
    return result
