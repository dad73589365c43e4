"""Register the evaluated speech-LLM in MLflow, gated on test WER.

Run: `llm-asr register --model models/speech_llm`.

The model is logged as a pyfunc (see `llm_asr.serving`) and registered under
`tracking.registered_model`. The alias `tracking.champion_alias` moves to the new
version only if its test WER is lower than the current champion's; otherwise the new
version gets `tracking.challenger_alias` and the result says why. Each version's tags
carry its lineage (git sha, dvc.lock digest, params, data hash) and its test WER.
Writes `reports/registration.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from llm_asr import tracking
from llm_asr.config import Config
from llm_asr.errors import UserError
from llm_asr.paths import Paths

console = Console(stderr=True)


def read_test_wer(paths: Paths) -> tuple[float, str]:
    """(average test WER of the speech-LLM, the file it came from): reports/metrics.json first."""
    merged = paths.reports / "metrics.json"
    single = paths.reports / "speech_llm" / "metrics.json"
    for path, key in ((merged, "speech-llm"), (single, None)):
        if path.exists():
            data = json.loads(path.read_text())
            data = data.get(key) if key else data
            if isinstance(data, dict) and "average_wer" in data:
                return float(data["average_wer"]), str(path.relative_to(paths.workdir))
    raise UserError(
        f"no speech-LLM test WER in {merged} or {single}: run `llm-asr evaluate` (and `llm-asr report`) first"
    )


def _model_dir(paths: Paths, model: str | Path | None) -> Path:
    path = Path(model) if model else paths.speech_llm_model
    if not path.is_absolute() and not path.exists():
        path = paths.workdir / path
    if not path.is_dir():
        raise UserError(f"model directory {path} does not exist: run `llm-asr train-speech-llm` first")
    return path.resolve()


def lineage_tags(cfg: Config, paths: Paths, wer: float, source: str) -> dict[str, str]:
    tags = tracking.run_tags(cfg, paths)
    return {
        **{k: tags[k] for k in ("git_sha", "dvc_lock_sha", "data_hash", "config_digest", "profile")},
        "params": json.dumps(cfg.flat(), sort_keys=True, separators=(",", ":")),
        "test_wer": f"{wer:.4f}",
        "test_wer_source": source,
    }


def decide(wer: float, champion: Any | None, cfg: Config, data_hash: str) -> tuple[str, str]:
    """(alias, reason) for a new version with test WER `wer` against the current champion version."""
    champ, chall = cfg.tracking.champion_alias, cfg.tracking.challenger_alias
    if champion is None:
        return champ, f"no {champ} yet: the first version becomes {champ} (test WER {wer:.2f}%)"
    raw = champion.tags.get("test_wer")
    if raw is None:
        return champ, f"{champ} v{champion.version} has no test_wer tag; replaced by test WER {wer:.2f}%"
    best = float(raw)
    note = ""
    if champion.tags.get("data_hash") not in (None, data_hash):
        note = " (note: the two were evaluated on different data)"
    if wer < best:
        return champ, f"test WER {wer:.2f}% beats {champ} v{champion.version}'s {best:.2f}%{note}"
    return chall, (
        f"test WER {wer:.2f}% does not beat {champ} v{champion.version}'s {best:.2f}%; stays {chall}{note}"
    )


def _tag_float(version: Any | None, key: str) -> float | None:
    return float(version.tags[key]) if version is not None and key in version.tags else None


def _current_champion(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _verify(model_uri: str, example: Any) -> None:
    """Load the logged pyfunc back and transcribe the input example, before it reaches the registry."""
    import mlflow

    try:
        out = mlflow.pyfunc.load_model(model_uri).predict(example)
    except Exception as e:  # noqa: BLE001 - any failure here means the package is broken
        raise UserError(
            f"the logged model does not load or predict ({type(e).__name__}: {e}); not registered"
        ) from e
    if list(out.columns) != ["text"] or len(out) != len(example):
        raise UserError(f"the logged model answered {out!r} for the input example; not registered")


def run(cfg: Config, paths: Paths, model: str | Path | None = None) -> dict[str, Any]:
    """Log + register the model; returns (and writes to reports/registration.json)
    {"model", "version", "alias", "test_wer", "champion_version", "champion_wer", "reason",
    "run_id", "model_uri"}."""
    import mlflow

    from llm_asr import serving

    model_dir = _model_dir(paths, model)
    wer, source = read_test_wer(paths)
    name = cfg.tracking.registered_model
    with tracking.stage_run(cfg, paths, "register") as active:
        client = mlflow.MlflowClient()
        info = serving.log_model(cfg, paths, model_dir)
        _verify(info.model_uri, serving.input_example(paths))
        champion = _current_champion(client, name, cfg.tracking.champion_alias)
        alias, reason = decide(wer, champion, cfg, tracking.data_hash(paths))
        version = mlflow.register_model(info.model_uri, name, tags=lineage_tags(cfg, paths, wer, source))
        client.set_registered_model_alias(name, alias, version.version)
        client.set_model_version_tag(name, version.version, "registration", reason)
        result = {
            "model": name,
            "version": int(version.version),
            "alias": alias,
            "test_wer": wer,
            "champion_version": int(champion.version) if champion else None,
            "champion_wer": _tag_float(champion, "test_wer"),
            "reason": reason,
            "run_id": active.info.run_id,
            "model_uri": f"models:/{name}/{version.version}",
        }
        mlflow.log_metric("test_average_wer", wer)
        mlflow.set_tags({"registered_version": str(version.version), "registered_alias": alias})
        paths.reports.mkdir(parents=True, exist_ok=True)
        out = paths.reports / "registration.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        mlflow.log_artifact(str(out), "reports")
    console.print(f"[bold]{name} v{version.version} -> {alias}[/bold]: {reason}")
    return result
