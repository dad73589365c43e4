"""Stage two: CTC encoder + projector + LLM (LoRA or frozen), trained with the shared trainer.

Run: `llm-asr train-speech-llm [--profile P] [--set speech_llm.stride_ms=240] [--workdir W] [--resume]`.
Reads `data/features/` and `models/ctc/`; the LLM comes from `speech_llm.llm`. Writes
`models/speech_llm/` (see llm_asr.models.speech_llm_dir: trained weights, the LoRA adapter,
the LLM reference and hash, never a copy of the LLM), curves.json/png and checkpoints/.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import torch

from llm_asr import tracking
from llm_asr.config import Config
from llm_asr.errors import UserError
from llm_asr.paths import Paths
from llm_asr.stages.train_ctc import load_cuts, per_language_subset
from llm_asr.training import distributed as D


def _usable(cuts: Any) -> tuple[Any, int]:
    """Drop cuts without a transcript (counted in the summary)."""
    keep = [c for c in cuts if c.supervisions and c.supervisions[0].text and c.supervisions[0].text.strip()]
    return type(cuts).from_cuts(keep), len(cuts) - len(keep)


def _build(cfg: Config, paths: Paths, train_texts: list[str]) -> tuple[Config, Any, Any, Any, dict[str, str]]:
    """(config with the CTC model's encoder/features, model, task, LLM tokenizer, LLM reference)."""
    from llm_asr.decoding.speech_llm import decode_features
    from llm_asr.features import load_cmvn
    from llm_asr.models.align_task import TokenTargets
    from llm_asr.models.encoder import load_ctc_model
    from llm_asr.models.encoder_cache import EncoderCache
    from llm_asr.models.llm import load_llm
    from llm_asr.models.projector import llm_token_vocab
    from llm_asr.models.speech_llm_dir import build_speech_llm
    from llm_asr.models.speech_llm_task import SpeechLlmTask

    ctc_model, ctc_tok, ctc_cfg = load_ctc_model(paths.ctc_model)
    trained = Config.model_validate(ctc_cfg)
    # the encoder and its features are whatever stage one trained; the rest is this run's config
    cfg = cfg.model_copy(update={"ctc": trained.ctc, "features": trained.features})
    llm, tok, ref = load_llm(cfg.speech_llm.llm)
    torch.manual_seed(cfg.seed)
    token_ids = llm_token_vocab(train_texts, tok) if cfg.speech_llm.projector == "token_ctc" else None
    model = build_speech_llm(cfg, ctc_model, ctc_tok.pieces, ctc_tok.blank, llm, tok, ctc_dir=paths.ctc_model,
                             token_ids=token_ids)
    cmvn = load_cmvn(paths.ctc_model / "cmvn.json")

    def sample_decode(m: Any, feats: Any, lens: torch.Tensor, encoded: Any = None) -> list[str]:
        return decode_features(m, tok, feats, lens, cfg.decoding, cfg.features.frame_shift_ms, encoded=encoded)

    cache = EncoderCache(model.encoder, cmvn) if cfg.speech_llm.freeze_encoder else None
    targets = TokenTargets(model.projector.token_ids, tok) if token_ids else None
    task = SpeechLlmTask(model, tok, ctc_tok, cmvn, cfg.speech_llm, decode=sample_decode, cache=cache,
                         token_targets=targets)
    return cfg, model, task, tok, ref


def _align(cfg: Config, task: Any, train_cuts: Any, valid: Any, out: Any, resume: bool,
           info: D.DistInfo) -> dict[str, Any]:
    """Alignment pretraining of the token_ctc projector (models/align_task.py), in a nested MLflow run
    `align` so its curves do not mix with the LLM phase's; {} when off."""
    import mlflow

    from llm_asr.models.align_task import TokenAlignTask
    from llm_asr.training import train

    scfg = cfg.speech_llm
    if scfg.projector != "token_ctc" or not scfg.align.enabled:
        return {}
    if task.cache is None:
        raise UserError("speech_llm.align needs a frozen encoder (speech_llm.freeze_encoder: true): "
                        "it trains on the encoder's cached outputs")
    align = TokenAlignTask(task.model.projector, task.cache, task.token_targets)
    nested = info.is_main and mlflow.active_run() is not None  # only rank 0 has an MLflow run
    with mlflow.start_run(run_name="align", nested=True) if nested else _null():
        summary = train(align, train_cuts, valid, scfg.align.train, out / "align_checkpoints", resume=resume,
                        seed=cfg.seed, dist_info=info)
    if not info.is_main:
        return {}
    for name in ("curves.json", "curves.png"):
        if (out / "align_checkpoints" / name).exists():
            shutil.copyfile(out / "align_checkpoints" / name, out / f"align_{name}")
    summary["unknown_dev_tokens"] = task.token_targets.unknown
    return {f"align_{k}": v for k, v in summary.items()}


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _train(cfg: Config, paths: Paths, resume: bool, info: D.DistInfo) -> dict[str, Any]:
    """Under torchrun every rank trains; only rank 0 (re)creates and writes the model directory."""
    from llm_asr.models.speech_llm_dir import save_model_dir
    from llm_asr.training import train

    out = paths.speech_llm_model
    if info.is_main:
        if not resume and out.exists():
            shutil.rmtree(out)  # a fresh run must not mix with an older one's files
        out.mkdir(parents=True, exist_ok=True)
    D.barrier(info)
    train_cuts, skipped = _usable(load_cuts(paths, "train"))
    if len(train_cuts) == 0:
        raise UserError("no train utterances with a transcript: check data/features/cuts_train.jsonl.gz")
    cfg, model, task, tok, ref = _build(cfg, paths, [c.supervisions[0].text for c in train_cuts])
    valid, _ = _usable(per_language_subset(load_cuts(paths, "dev"), cfg.speech_llm.valid_per_language))
    counts = _parameter_counts(model)
    aligned = _align(cfg, task, train_cuts, valid, out, resume, info)
    summary = train(task, train_cuts, valid, cfg.speech_llm.train, out / "checkpoints", resume=resume,
                    seed=cfg.seed, dist_info=info)
    if not info.is_main:
        return summary
    save_model_dir(model, cfg, ref, paths.ctc_model, out)
    for name in ("curves.json", "curves.png"):
        if (out / "checkpoints" / name).exists():
            shutil.copyfile(out / "checkpoints" / name, out / name)
    summary.update(counts, **aligned, skipped_no_transcript=skipped, llm_sha256=ref["weights_sha256"][:16],
                   encoder_cache_utterances=len(task.cache) if task.cache is not None else 0)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _parameter_counts(model: Any) -> dict[str, float]:
    def count(ps: Any, trainable: bool = True) -> float:
        return round(sum(p.numel() for p in ps if p.requires_grad or not trainable) / 1e6, 3)

    lora = [p for n, p in model.llm.named_parameters() if ".lora_" in n]
    return {
        "encoder_params_m": count(model.encoder.parameters(), False),
        "projector_params_m": count(model.projector.parameters()),
        "lora_params_m": round(sum(p.numel() for p in lora) / 1e6, 3),
        "llm_params_m": count(model.llm.parameters(), False),
    }


def run(cfg: Config, paths: Paths, resume: bool = False) -> dict[str, Any]:
    """Train stage two; returns the training summary (steps, minutes, best dev loss, ...). Under
    torchrun only rank 0 opens the MLflow run and writes the model directory."""
    info = D.init_from_env()
    if not info.is_main:
        summary = _train(cfg, paths, resume, info)
        D.barrier(info)
        return summary
    import mlflow

    with tracking.stage_run(cfg, paths, "train_speech_llm"):
        summary = _train(cfg, paths, resume, info)
        mlflow.log_metrics({k: float(v) for k, v in summary.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for name in ("config.json", "curves.png", "align_curves.png", "train_summary.json"):
            if (paths.speech_llm_model / name).exists():
                mlflow.log_artifact(str(paths.speech_llm_model / name))
    D.barrier(info)
    return summary
