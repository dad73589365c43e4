"""Stage one: sentencepiece tokenizer + CTC encoder (conformer, or pretrained Whisper), also the baseline system.

Run: `llm-asr train-ctc [--profile P] [--set ctc.train.lr=...] [--workdir W] [--resume]`
(under `torchrun --nproc-per-node 2 -m llm_asr.cli train-ctc` for data parallelism).
Writes `models/ctc/`: model.pt (best dev-WER weights), config.json, tokenizer.model,
cmvn.json, whisper_encoder.json (ctc.encoder.source=whisper only: the encoder's shape),
curves.json/png, dev_metrics.json (greedy CTC on the whole dev split), lm.arpa +
lexicon.txt (the baseline's word n-gram LM, see decoding/lm.py) and checkpoints/ (for --resume);
and reports/ctc_train/ (dev metrics, train/valid curves for DVC).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet

from llm_asr import tracking
from llm_asr.config import Config
from llm_asr.data.manifests import load_cuts as load_cuts_file
from llm_asr.errors import UserError
from llm_asr.evaluation import metrics_json
from llm_asr.paths import Paths
from llm_asr.training import distributed as D


def load_cuts(paths: Paths, split: str) -> CutSet:
    path = paths.features / f"cuts_{split}.jsonl.gz"
    if not path.is_file():
        raise UserError(f"no features at {path}: run `llm-asr extract-features` first")
    cuts = load_cuts_file(path, paths.workdir)  # resolves the workdir-relative audio/feature paths
    if len(cuts) == 0:
        raise UserError(f"{path} holds no cuts")
    return cuts


def per_language_subset(cuts: CutSet, n: int) -> CutSet:
    """The first n cuts of each language (deterministic), for quick periodic validation."""
    seen: dict[str, int] = {}
    keep = []
    for c in cuts:
        lang = c.supervisions[0].language
        if seen.get(lang, 0) < n:
            seen[lang] = seen.get(lang, 0) + 1
            keep.append(c)
    return CutSet.from_cuts(keep)


@torch.no_grad()
def dev_metrics(task: Any, cuts: CutSet, max_duration_s: float) -> dict[str, Any]:
    """Greedy CTC WER/CER per language on precomputed dev features."""
    from llm_asr.data.batching import make_eval_sampler
    from llm_asr.decoding.ctc import greedy_ids

    task.model.eval()
    by_lang: dict[str, tuple[list[str], list[str]]] = {}
    for batch_cuts in make_eval_sampler(cuts, max_duration_s):
        b = task.collate_valid(batch_cuts)
        logits, out_lens = task.model(b["feats"], b["lens"])
        for c, ref, ids in zip(batch_cuts, b["texts"], greedy_ids(logits, out_lens)):
            refs, hyps = by_lang.setdefault(c.supervisions[0].language, ([], []))
            refs.append(ref)
            hyps.append(task.tokenizer.decode(ids))
    return metrics_json("ctc", "dev", by_lang)


def _prepare_dir(out: Path, cfg: Config, paths: Paths, resume: bool, info: D.DistInfo):
    """Tokenizer (trained by rank 0, deterministic) and CMVN stats in the model dir."""
    from llm_asr.features import load_cmvn
    from llm_asr.models.tokenizer import CtcTokenizer, train_tokenizer

    train_cuts = load_cuts(paths, "train")
    if info.is_main:
        if not resume and out.exists():
            shutil.rmtree(out)  # a fresh run must not mix with an older one's files
        out.mkdir(parents=True, exist_ok=True)
        if not (resume and (out / "tokenizer.model").exists()):
            train_tokenizer((c.supervisions[0].text for c in train_cuts), cfg.ctc.tokenizer, out / "tokenizer.model")
        shutil.copyfile(paths.features / "cmvn.json", out / "cmvn.json")
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    D.barrier(info)
    return train_cuts, CtcTokenizer(out / "tokenizer.model"), load_cmvn(out / "cmvn.json")


def _train(cfg: Config, paths: Paths, resume: bool, info: D.DistInfo) -> dict[str, Any]:
    from llm_asr.models.ctc_task import CtcTask
    from llm_asr.models.encoder import WEIGHTS, build_ctc_model, save_encoder_files
    from llm_asr.training import train
    from llm_asr.training.checkpoint import atomic_save

    out = paths.ctc_model
    train_cuts, tokenizer, cmvn = _prepare_dir(out, cfg, paths, resume, info)
    dev_cuts = load_cuts(paths, "dev")
    torch.manual_seed(cfg.seed)
    model = build_ctc_model(cfg.ctc, cfg.features.num_mel_bins, tokenizer.num_classes)
    if info.is_main:
        save_encoder_files(model.encoder, out)  # a pretrained encoder's shape (its weights go in model.pt)
    task = CtcTask(model, tokenizer, cmvn, cfg.ctc, cfg.features)
    valid = per_language_subset(dev_cuts, cfg.ctc.valid_per_language)
    summary = train(task, train_cuts, valid, cfg.ctc.train, out / "checkpoints", resume=resume, seed=cfg.seed,
                    dist_info=info)
    summary["parameters_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
    if not info.is_main:
        return summary
    atomic_save(model.state_dict(), out / WEIGHTS)  # best dev-WER weights (the trainer restored them)
    summary.update(build_lm(cfg, paths, out, tokenizer, [c.supervisions[0].text for c in train_cuts]))
    for name in ("curves.json", "curves.png"):
        if (out / "checkpoints" / name).exists():
            shutil.copyfile(out / "checkpoints" / name, out / name)
    dev = dev_metrics(task, dev_cuts, cfg.ctc.train.max_duration_s)
    (out / "dev_metrics.json").write_text(json.dumps(dev, indent=1))
    summary["dev_average_wer"] = dev["average_wer"]
    _write_reports(paths.reports / "ctc_train", dev, out / "curves.json")
    return summary


def lm_texts(cfg: Config, paths: Paths, train_texts: list[str]) -> tuple[list[str], int]:
    """The LM's sentences (ctc.lm.text): every language's `lm_text.txt`, text-only sentences that
    prepare-data held out of all three splits ("lm_text"), plus the train transcripts ("corpus"),
    or the transcripts only ("train", e.g. for real MLS, which ships no lm_text.txt here).
    A missing `lm_text.txt` is an error, never a silent switch to the train transcripts: an LM
    holding the train sentences decodes train audio almost perfectly (stage two then learns to copy)."""
    from llm_asr.data.synthetic import LM_TEXT

    texts = list(train_texts) if cfg.ctc.lm.text != "lm_text" else []
    extra = 0
    if cfg.ctc.lm.text in ("lm_text", "corpus"):
        missing = [lang for lang in cfg.data.languages if not (paths.corpus / f"mls_{lang}" / LM_TEXT).is_file()]
        if missing:
            raise UserError(
                f"ctc.lm.text={cfg.ctc.lm.text} needs {paths.corpus}/mls_<language>/{LM_TEXT}, missing for "
                f"{', '.join(missing)}: pass the corpus to this stage (run `llm-asr prepare-data`), or set "
                f"ctc.lm.text=train to build the LM from the train transcripts")
        for language in cfg.data.languages:
            path = paths.corpus / f"mls_{language}" / LM_TEXT
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            texts += lines
            extra += len(lines)
    if not texts:
        raise UserError("the CTC baseline's LM has no text: every transcript and lm_text.txt is empty")
    return texts, extra


def build_lm(cfg: Config, paths: Paths, out: Path, tokenizer: Any, train_texts: list[str]) -> dict[str, float]:
    """Estimate the word n-gram LM and spell its words for the lexicon decoder (seconds)."""
    from llm_asr.decoding.ctc import LEXICON_FILE, LM_FILE, lexicon_spelling
    from llm_asr.decoding.lm import train_arpa, write_lexicon

    texts, extra = lm_texts(cfg, paths, train_texts)
    stats = train_arpa(texts, cfg.ctc.lm.order, out / LM_FILE)
    spell, _ = lexicon_spelling(tokenizer)
    stats.update(write_lexicon((w for t in texts for w in t.split()), spell, out / LEXICON_FILE))
    stats["lm_text_only_sentences"] = extra
    return stats


def _write_reports(folder: Path, dev: dict[str, Any], curves_file: Path) -> None:
    """DVC metrics/plots outside the model dir: dev WER and the train/valid curves."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dev_metrics.json").write_text(json.dumps(dev, indent=1))
    rows = json.loads(curves_file.read_text()) if curves_file.exists() else []
    train_rows = [{k: r[k] for k in ("step", "minutes", "train_loss", "lr", "audio_s_per_s")} for r in rows
                  if "train_loss" in r]
    valid_rows = [{k: r[k] for k in ("step", "minutes", "valid_loss", "valid_wer", "valid_cer") if k in r}
                  for r in rows if "valid_wer" in r]
    (folder / "train_curve.json").write_text(json.dumps(train_rows, indent=1))
    (folder / "valid_curve.json").write_text(json.dumps(valid_rows, indent=1))


def run(cfg: Config, paths: Paths, resume: bool = False) -> dict[str, Any]:
    """Train the tokenizer and the CTC model; returns the training summary and dev WER."""
    info = D.init_from_env()
    if not info.is_main:
        return _train(cfg, paths, resume, info)
    import mlflow

    with tracking.stage_run(cfg, paths, "train_ctc"):
        summary = _train(cfg, paths, resume, info)
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        for name in ("curves.png", "curves.json", "dev_metrics.json", "config.json"):
            if (paths.ctc_model / name).exists():
                mlflow.log_artifact(str(paths.ctc_model / name), artifact_path="ctc")
    return summary
