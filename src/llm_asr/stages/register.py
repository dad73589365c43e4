"""Register the evaluated speech-LLM in MLflow, behind a champion gate.

Run: `llm-asr register --model models/speech_llm`.

The model is logged as a pyfunc (see `llm_asr.serving`) and registered under
`tracking.registered_model`. The alias `tracking.champion_alias` moves to the new version
only if its speech-LLM test WER (`reports/metrics.json["speech-llm"]`)
1. comes from the full split (`evaluate.max_utterances_per_language: 0`, skipped
   utterances counted): a subset evaluation never becomes champion;
2. beats the same run's CTC baseline (`reports/metrics.json["ctc"]`, CTC + LM), scored
   on the same split and utterances;
3. beats the current champion's, evaluated on the same split, profile and data
   (`data_sha`, the digest of the split's manifests).
Otherwise the version gets `tracking.challenger_alias`. Either way its `gate_reason` tag
and `reports/registration.json` say why, in one line. Each version's tags carry its
lineage (git sha, dvc.lock digest, params, data hash, the stage-two run that trained it, and on
KFP the run id and image) and what the gate compared; the register run logs the train, dev and
test manifests as dataset inputs with their digests.
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
SYSTEMS = {"speech-llm": "speech_llm", "ctc": "ctc"}  # reports/metrics.json key -> reports/<folder>/
COMPARABLE = ("split", "profile", "data_sha")  # a WER compares with a champion's only where these agree


def read_metrics(paths: Paths) -> tuple[dict[str, dict], str]:
    """({"speech-llm": <evaluate JSON>, "ctc": ... when there}, the file they came from):
    reports/metrics.json, else the per-system files `llm-asr report` merges."""
    merged = paths.reports / "metrics.json"
    if merged.exists():
        data = json.loads(merged.read_text())
        found, source = {k: data[k] for k in SYSTEMS if isinstance(data.get(k), dict)}, merged
    else:
        files = {k: paths.reports / folder / "metrics.json" for k, folder in SYSTEMS.items()}
        found = {k: json.loads(f.read_text()) for k, f in files.items() if f.exists()}
        source = files["speech-llm"]
    if "average_wer" not in found.get("speech-llm", {}):
        raise UserError(
            f"no speech-LLM test WER in {source}: run `llm-asr evaluate` (and `llm-asr report`) first"
        )
    return found, str(source.relative_to(paths.workdir))


def _model_dir(paths: Paths, model: str | Path | None) -> Path:
    path = Path(model) if model else paths.speech_llm_model
    if not path.is_absolute() and not path.exists():
        path = paths.workdir / path
    if not path.is_dir():
        raise UserError(f"model directory {path} does not exist: run `llm-asr train-speech-llm` first")
    return path.resolve()


split_data_sha = tracking.split_digest  # the gate's data_sha: the digest of one split's manifests


def _utterances(metrics: dict) -> int:
    return sum(m["utterances"] for m in metrics["languages"].values())


def evaluation_tags(cfg: Config, paths: Paths, speech_llm: dict, ctc: dict | None) -> dict[str, str]:
    """What the gate compares, as version tags (strings, so a later version compares with them)."""
    split = speech_llm.get("split", cfg.evaluate.split)
    subset = speech_llm.get("max_utterances_per_language", cfg.evaluate.max_utterances_per_language)
    return {
        "test_wer": f"{speech_llm['average_wer']:.4f}",
        "split": split,
        "data_sha": split_data_sha(paths, split),
        "max_utterances_per_language": str(subset),
        "skipped": str(speech_llm["skipped"]) if "skipped" in speech_llm else "unrecorded",
        "test_utterances": str(_utterances(speech_llm)),
        "ctc_wer": f"{ctc['average_wer']:.4f}" if ctc else "none",
    }


def lineage_tags(
    cfg: Config, run_tags: dict[str, str], source: str, training_run: str = "unknown"
) -> dict[str, str]:
    """The version's lineage from its registering run's tags (`tracking.run_tags`, as that run was
    tagged: a commit landing mid-stage cannot give the version another git sha than its run), and
    the id of the stage-two run that trained it (`tracking.find_training_run`)."""
    return {
        **{k: run_tags[k] for k in ("git_sha", "dvc_lock_sha", "data_hash", "config_digest", "profile")},
        **{k: run_tags[k] for k in tracking.ORCHESTRATOR_TAGS if k in run_tags},  # KFP run id, image
        "training_run_id": training_run,
        "params": json.dumps(cfg.flat(), sort_keys=True, separators=(",", ":")),
        "test_wer_source": source,
    }


def _own_refusal(cand: dict[str, str], ctc: dict | None, champ: str) -> str | None:
    """Why this evaluation cannot become champion on its own terms (subset, no or another baseline)."""
    wer, split = float(cand["test_wer"]), cand["split"]
    if (limit := cand["max_utterances_per_language"]) != "0":
        return (f"speech-llm was evaluated on a subset (evaluate.max_utterances_per_language={limit}), "
                f"not the full {split} split: a subset never becomes {champ}")
    if cand["data_sha"] == "none":
        return f"no {split} manifests under data/manifests: the evaluated data is unknown"
    if cand["skipped"] == "unrecorded":
        return "the speech-llm metrics do not record how many utterances were skipped"
    if ctc is None:
        return "no ctc baseline in the same run's metrics: nothing to beat"
    if (ctc.get("split"), str(_utterances(ctc))) != (split, cand["test_utterances"]):
        return (f"the same run's ctc was scored on {ctc.get('split')} ({_utterances(ctc)} utterances), "
                f"speech-llm on {split} ({cand['test_utterances']}): not comparable")
    if wer >= ctc["average_wer"]:
        return f"speech-llm {wer:.2f}% does not beat the same run's ctc {ctc['average_wer']:.2f}%"
    return None


def _champion_refusal(cand: dict[str, str], champion: Any, champ: str) -> str | None:
    """Why this evaluation does not replace CHAMPION (not comparable, or not better)."""
    name = f"{champ} v{champion.version}"
    for key in COMPARABLE:
        theirs = champion.tags.get(key, "(none)")
        if theirs != cand[key]:
            return f"{name} has {key} {theirs}, this version {cand[key]}: their WERs are not comparable"
    if "test_wer" not in champion.tags:
        return f"{name} has no test_wer tag: nothing to compare with"
    best, wer = float(champion.tags["test_wer"]), float(cand["test_wer"])
    if wer >= best:
        return f"speech-llm {wer:.2f}% beats the same run's ctc but not {name}'s {best:.2f}%"
    return None


def decide(cand: dict[str, str], ctc: dict | None, champion: Any | None, cfg: Config) -> tuple[str, str]:
    """(alias, one-line reason) for a version tagged CAND (`lineage_tags` + `evaluation_tags`), given
    the same run's CTC metrics and the current champion version (None if there is none)."""
    champ, chall = cfg.tracking.champion_alias, cfg.tracking.challenger_alias
    refusal = _own_refusal(cand, ctc, champ)
    if refusal is None and champion is not None:
        refusal = _champion_refusal(cand, champion, champ)
    if refusal is not None:
        return chall, f"{refusal}; stays {chall}"
    wer, base = float(cand["test_wer"]), f"the same run's ctc {ctc['average_wer']:.2f}%"
    if champion is None:
        return champ, f"speech-llm {wer:.2f}% beats {base}; no {champ} yet"
    best = float(champion.tags["test_wer"])
    return champ, f"speech-llm {wer:.2f}% beats {base} and {champ} v{champion.version}'s {best:.2f}%"


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
    {"model", "version", "alias", "test_wer", "ctc_wer", "split", "data_sha", "skipped",
    "champion_version", "champion_wer", "reason", "run_id", "model_uri"}."""
    import mlflow

    from llm_asr import serving

    model_dir = _model_dir(paths, model)
    metrics, source = read_metrics(paths)
    name = cfg.tracking.registered_model
    with tracking.stage_run(cfg, paths, "register") as active:
        client = mlflow.MlflowClient()
        info = serving.log_model(cfg, paths, model_dir)
        _verify(info.model_uri, serving.input_example(paths))
        champion = _current_champion(client, name, cfg.tracking.champion_alias)
        llm, ctc = metrics["speech-llm"], metrics.get("ctc")
        training_run = tracking.find_training_run(cfg, paths, model_dir)
        lineage = lineage_tags(cfg, client.get_run(active.info.run_id).data.tags, source, training_run)
        tags = {**lineage, **evaluation_tags(cfg, paths, llm, ctc)}
        alias, reason = decide(tags, ctc, champion, cfg)
        version = mlflow.register_model(info.model_uri, name, tags={**tags, "gate_reason": reason})
        client.set_registered_model_alias(name, alias, version.version)
        result = {
            "model": name,
            "version": int(version.version),
            "alias": alias,
            "test_wer": llm["average_wer"],
            "ctc_wer": ctc["average_wer"] if ctc else None,
            "split": tags["split"],
            "data_sha": tags["data_sha"],
            "skipped": llm.get("skipped"),
            "champion_version": int(champion.version) if champion else None,
            "champion_wer": _tag_float(champion, "test_wer"),
            "reason": reason,
            "run_id": active.info.run_id,
            "model_uri": f"models:/{name}/{version.version}",
        }
        mlflow.log_metric("test_average_wer", result["test_wer"])
        mlflow.set_tags({"registered_version": str(version.version), "registered_alias": alias,
                         "training_run_id": training_run})
        paths.reports.mkdir(parents=True, exist_ok=True)
        out = paths.reports / "registration.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        mlflow.log_artifact(str(out), "reports")
    console.print(f"[bold]{name} v{version.version} -> {alias}[/bold]: {reason}")
    return result
