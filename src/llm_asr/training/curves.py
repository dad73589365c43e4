"""Training curves: the logged rows as JSON and a loss/WER-vs-step PNG in the model dir."""

from __future__ import annotations

import json
from pathlib import Path


def write_curves(rows: list[dict[str, float]], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    (out_dir / "curves.json").write_text(json.dumps(rows, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k in r if k.endswith("loss") or k.endswith("wer")})
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if k.startswith("valid") else None, label=k)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=100)
    plt.close(fig)
