"""Merge the systems' test metrics into reports/metrics.json and a results table.

Run: `llm-asr report [--workdir W]`. Reads reports/<system>/metrics.json for the three systems
of one run (`ctc`: the baseline as the DAG decodes it, with its n-gram LM; `ctc-greedy`: the same
model without LM, the paper's LM-free comparison; `speech-llm`) and, where evaluated, their
out-of-domain scores reports/<system>/ood/metrics.json. Writes reports/metrics.json =
{"ctc": {..., "test_ood": {...}}, "ctc-greedy": ..., "speech-llm": ...} and reports/results.md
(per-language WER/CER side by side, the speech-LLM's ratio to both baselines). When the peer was
evaluated (reports/whisper/metrics.json: Whisper base, what a user would pick instead; the DAG scores
it on a per-language subset of the test set, ~0.8 s per utterance here), metrics.json gains "whisper"
and results.md a table of every system on the utterances the peer and all systems scored, each WER
recomputed from the hyps.jsonl files restricted to those ids ("same_utterances"). Then it prints
(and logs) this run's speech-LLM and CTC WER against the registered champion version's
(`champion_delta`), or says why it cannot: no registry answering, no champion yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from llm_asr import tracking
from llm_asr.config import Config
from llm_asr.errors import UserError
from llm_asr.evaluation import comparison_table, markdown_table
from llm_asr.paths import Paths

SYSTEMS = {"ctc": "ctc", "ctc-greedy": "ctc_greedy", "speech-llm": "speech_llm"}
PEER = "whisper"  # reports/whisper/: the peer system, optional (the DAG's evaluate_whisper stage)
HOW = {"ctc": "--system ctc", "ctc-greedy": "--system ctc --set ctc.lm.weight=0",
       "speech-llm": "--system speech-llm", PEER: "--system whisper"}
OOD = "test_ood"
console = Console(stderr=True)
PAPER_RATIO = 0.82  # Fathullah et al. (2023): 18% lower average WER than the LM-free CTC baseline


def _read(path: Path, system: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no {path}: run `llm-asr evaluate {HOW[system]} --out {path}` first")
    return json.loads(path.read_text())


def merge(paths: Paths) -> dict[str, Any]:
    """{system: its test metrics JSON (+ "test_ood" when reports/<folder>/ood/metrics.json exists)}."""
    merged: dict[str, Any] = {}
    for system, folder in SYSTEMS.items():
        merged[system] = _read(paths.reports / folder / "metrics.json", system)
        ood = paths.reports / folder / "ood" / "metrics.json"
        if ood.is_file():
            merged[system][OOD] = json.loads(ood.read_text())
    # the same split and utterances per language (not the same path: each KFP task has its own workdir)
    sets = {(m.get("split"), tuple(sorted((lang, v["utterances"]) for lang, v in m["languages"].items())))
            for m in merged.values()}
    if len(sets) > 1:
        raise UserError(f"the systems were scored on different test sets {sorted(map(str, sets))}: "
                        "evaluate all three on the same --data-dir and --split")
    return merged


def peer(paths: Paths) -> dict[str, Any] | None:
    """The Whisper peer's metrics with "same_utterances": {system: its metrics JSON on the utterances the
    peer and every system all scored}, from each one's hyps.jsonl (the peer's own row too), and
    "same_utterances_count"; None when the peer was not evaluated."""
    from llm_asr.evaluation import metrics_json
    from llm_asr.stages.evaluate import by_language, read_hyps

    folder = paths.reports / PEER
    if not (folder / "metrics.json").is_file():
        return None
    result = json.loads((folder / "metrics.json").read_text())
    hyps: dict[str, list[dict]] = {}
    for system, sub in {**SYSTEMS, PEER: PEER}.items():
        path = paths.reports / sub / "hyps.jsonl"
        if not path.is_file():
            raise UserError(f"no {path}: re-run `llm-asr evaluate {HOW[system]} --out "
                            f"{path.parent / 'metrics.json'}` (this version writes it) before the report")
        hyps[system] = read_hyps(path)
    common = set.intersection(*({d["id"] for d in h} for h in hyps.values()))
    if not common:
        raise UserError(f"the peer ({folder}) and the systems scored no utterance in common: evaluate them on "
                        "the same --data-dir and --split")
    dropped = len(hyps[PEER]) - len(common)
    if dropped:  # e.g. the systems were scored on a smaller subset: a counted decision, never silent
        console.print(f"peer table: {dropped} of the peer's {len(hyps[PEER])} utterances were not scored by "
                      f"every system; the table uses the {len(common)} all of them scored")
    same = {s: metrics_json(s, "same utterances", by_language([d for d in h if d["id"] in common]))
            for s, h in hyps.items()}
    result.update(same_utterances=same, same_utterances_count=len(common), peer_utterances_not_shared=dropped)
    return result


def ratios(merged: dict[str, Any], key: str | None = None) -> dict[str, float]:
    """Speech-LLM average WER over each baseline's (on the in-domain test, or on `key`, e.g. test_ood)."""
    def wer(system: str) -> float | None:
        m = merged[system] if key is None else merged[system].get(key)
        return None if m is None else m["average_wer"]

    llm = wer("speech-llm")
    return {f"speech_llm_to_{b.replace('-', '_')}": round(llm / max(wer(b), 1e-9), 4)
            for b in ("ctc-greedy", "ctc") if llm is not None and wer(b) is not None}


def results_markdown(cfg: Config, merged: dict[str, Any]) -> str:
    r = ratios(merged)
    lines = [
        "# Results (test split)",
        "",
        f"Profile `{cfg.profile}`. Average WER is the unweighted mean over languages; WER/CER in percent. "
        "Decoding: " + "; ".join(f"{s}: {m.get('decoding', '?')}" for s, m in merged.items()) + ".",
        "",
        comparison_table({s: m for s, m in merged.items()}),
        f"Speech-LLM / CTC greedy (no LM; the paper's comparison): **{r['speech_llm_to_ctc_greedy']:.3f}x** "
        f"(the paper: {PAPER_RATIO}x). Speech-LLM / CTC + n-gram LM: **{r['speech_llm_to_ctc']:.3f}x**.",
        "",
    ]
    ours = {s: merged[s] for s in SYSTEMS}
    if all(OOD in m for m in ours.values()):
        o = ratios(merged, OOD)
        lines += [
            "## Out-of-domain test (other text, unseen voices)",
            "",
            comparison_table({s: m[OOD] for s, m in ours.items()}),
            f"Speech-LLM / CTC greedy: **{o['speech_llm_to_ctc_greedy']:.3f}x**; "
            f"speech-LLM / CTC + LM: **{o['speech_llm_to_ctc']:.3f}x**.",
            "",
        ]
    if PEER in merged:
        p = merged[PEER]
        n = sum(v["utterances"] for v in p["languages"].values())
        lines += [
            "## Peer: Whisper base (what a user would run instead)",
            "",
            f"{p['model']}; {p.get('decoding', '?')}. Scored on {n} test utterances (the first "
            f"{p.get('max_utterances_per_language') or 'all'} per language); every system below, the peer "
            f"included, on exactly the {p['same_utterances_count']} of them that all scored "
            f"({p['peer_utterances_not_shared']} not shared), WER from each system's hyps.jsonl.",
            "",
            comparison_table(p["same_utterances"]),
        ]
    lines += [markdown_table({k: v for k, v in merged[s].items() if k != OOD}) for s in SYSTEMS]
    return "\n".join(lines)


def champion_delta(cfg: Config, paths: Paths, merged: dict[str, Any]) -> dict[str, Any] | None:
    """{"version", "comparable", "speech_llm_wer_delta", "ctc_wer_delta"}: this run's test WER minus
    the champion version's (its `test_wer` / `ctc_wer` tags, points; negative = better). `comparable`:
    the champion was scored on the same split and data (`data_sha`; unknown without manifests). None,
    with the reason printed, when no registry answers or no version holds the champion alias."""
    import mlflow

    name, alias = cfg.tracking.registered_model, cfg.tracking.champion_alias
    try:
        champion = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except Exception as e:  # noqa: BLE001 - no registry, no model, no alias: nothing to compare with
        console.print(f"no delta against {name}@{alias}: {str(e).splitlines()[0][:200]}")
        return None
    split = merged["speech-llm"].get("split", cfg.evaluate.split)
    ours = tracking.split_digest(paths, split)
    delta: dict[str, Any] = {
        "version": int(champion.version),
        "comparable": champion.tags.get("split") == split and champion.tags.get("data_sha") == ours != "none",
    }
    for system, tag in (("speech-llm", "test_wer"), ("ctc", "ctc_wer")):
        theirs = champion.tags.get(tag, "none")
        if theirs != "none":
            wer = merged[system]["average_wer"]
            delta[f"{system.replace('-', '_')}_wer_delta"] = round(wer - float(theirs), 4)
    shown = ", ".join(f"{k[:-10]} {v:+.2f}" for k, v in delta.items() if k.endswith("_wer_delta"))
    theirs_data = champion.tags.get("data_sha")
    note = "" if delta["comparable"] else f" (not comparable: champion data_sha {theirs_data}, ours {ours})"
    console.print(f"WER vs {name}@{alias} v{champion.version}: {shown or 'no WER tags'} points{note}")
    return delta


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    """Returns the merged metrics dict."""
    merged = merge(paths)
    whisper = peer(paths)
    if whisper is not None:
        merged[PEER] = whisper
    paths.reports.mkdir(parents=True, exist_ok=True)
    (paths.reports / "metrics.json").write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    (paths.reports / "results.md").write_text(results_markdown(cfg, merged))
    with tracking.stage_run(cfg, paths, "report"):
        import mlflow

        for system, m in merged.items():
            mlflow.log_metric(f"{system.replace('-', '_')}_average_wer", m["average_wer"])
            if system == PEER:
                mlflow.log_metrics({f"{s.replace('-', '_')}_wer_on_peer_utterances": v["average_wer"]
                                    for s, v in m["same_utterances"].items()})
            if OOD in m:
                mlflow.log_metric(f"{system.replace('-', '_')}_ood_average_wer", m[OOD]["average_wer"])
        mlflow.log_metrics({f"wer_ratio_{k}": v for k, v in ratios(merged).items()})
        mlflow.log_metrics({f"ood_wer_ratio_{k}": v for k, v in ratios(merged, OOD).items()})
        mlflow.log_artifact(str(paths.reports / "results.md"))
        delta = champion_delta(cfg, paths, merged)
        if delta is not None:
            mlflow.log_metrics({f"vs_champion_{k}": v for k, v in delta.items() if k.endswith("_wer_delta")})
            mlflow.set_tag("champion_version", str(delta["version"]))
    return merged
