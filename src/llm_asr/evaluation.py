"""WER/CER per language (jiwer), the DESIGN section 5 metrics JSON, a markdown table and a bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jiwer


def score_language(refs: list[str], hyps: list[str]) -> dict[str, Any]:
    """Corpus-level WER and CER in percent (errors / reference words or characters)."""
    if not refs:
        raise ValueError("no utterances to score")
    return {
        "wer": round(100 * jiwer.wer(refs, hyps), 2),
        "cer": round(100 * jiwer.cer(refs, hyps), 2),
        "utterances": len(refs),
    }


def metrics_json(system: str, model: str, by_language: dict[str, tuple[list[str], list[str]]]) -> dict[str, Any]:
    """{"system", "model", "average_wer", "languages": {lang: {"wer", "cer", "utterances"}}};
    average_wer is the unweighted mean over languages (each language counts the same)."""
    langs = {lang: score_language(r, h) for lang, (r, h) in sorted(by_language.items())}
    avg = round(sum(v["wer"] for v in langs.values()) / len(langs), 2) if langs else None
    return {"system": system, "model": model, "average_wer": avg, "languages": langs}


def markdown_table(metrics: dict[str, Any]) -> str:
    lines = [
        f"### {metrics['system']} ({metrics['model']})",
        "",
        *([f"Decoding: {metrics['decoding']}.", ""] if metrics.get("decoding") else []),
        "| language | WER % | CER % | utterances |",
        "|---|---:|---:|---:|",
    ]
    for lang, m in metrics["languages"].items():
        lines.append(f"| {lang} | {m['wer']:.2f} | {m['cer']:.2f} | {m['utterances']} |")
    avg_cer = sum(m["cer"] for m in metrics["languages"].values()) / max(1, len(metrics["languages"]))
    total = sum(m["utterances"] for m in metrics["languages"].values())
    lines.append(f"| **average** | **{metrics['average_wer']:.2f}** | {avg_cer:.2f} | {total} |")
    return "\n".join(lines) + "\n"


def bar_chart(metrics: dict[str, Any], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = list(metrics["languages"])
    wer = [metrics["languages"][lang]["wer"] for lang in langs]
    cer = [metrics["languages"][lang]["cer"] for lang in langs]
    x = range(len(langs))
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(langs)), 3.5))
    ax.bar([i - 0.2 for i in x], wer, width=0.4, label="WER %")
    ax.bar([i + 0.2 for i in x], cer, width=0.4, label="CER %")
    ax.axhline(metrics["average_wer"], color="k", ls="--", lw=1, label=f"average WER {metrics['average_wer']:.1f}")
    ax.set_xticks(list(x), langs, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_title(f"{metrics['system']}: error rates per language")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def comparison_table(systems: dict[str, dict[str, Any]]) -> str:
    """Per-language WER/CER side by side for several systems' metrics JSONs."""
    names = list(systems)
    langs = sorted({lang for m in systems.values() for lang in m["languages"]})
    head = "| language | " + " | ".join(f"{n} WER % | {n} CER %" for n in names) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(names)]
    for lang in langs:
        cells = []
        for n in names:
            m = systems[n]["languages"].get(lang)
            cells.append(f"{m['wer']:.2f} | {m['cer']:.2f}" if m else "- | -")
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines.append("| **average** | " + " | ".join(f"**{systems[n]['average_wer']:.2f}** | " for n in names) + "|")
    return "\n".join(lines) + "\n"
