"""CTC decoding: greedy (best path) and prefix beam search; `CtcRecognizer` for the baseline system."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from llm_asr.data.batching import apply_cmvn, pad_features
from llm_asr.models.tokenizer import BLANK


def greedy_ids(log_probs: torch.Tensor, lens: torch.Tensor, blank: int = BLANK) -> list[list[int]]:
    """[B, T, V] scores -> per utterance: argmax path, repeats collapsed, blanks removed."""
    best = log_probs.argmax(-1)  # [B, T]
    out = []
    for b in range(best.shape[0]):
        path = best[b, : int(lens[b])].tolist()
        out.append([t for i, t in enumerate(path) if t != blank and (i == 0 or t != path[i - 1])])
    return out


def prefix_beam_ids(log_probs: torch.Tensor, beam: int, blank: int = BLANK, prune: int = 16) -> list[int]:
    """CTC prefix beam search (no LM) over one utterance's log-probs [T, V]."""
    lp = log_probs.float().cpu().numpy()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # (p_blank, p_nonblank)
    for t in range(lp.shape[0]):
        top = np.argsort(lp[t])[::-1][:prune]
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (pb, pnb) in beams.items():
            total = np.logaddexp(pb, pnb)
            for c in top:
                p = float(lp[t, c])
                if c == blank:
                    nxt[prefix][0] = np.logaddexp(nxt[prefix][0], total + p)
                    continue
                ext = prefix + (int(c),)
                if prefix and prefix[-1] == c:
                    nxt[ext][1] = np.logaddexp(nxt[ext][1], pb + p)  # repeat needs a blank between
                    nxt[prefix][1] = np.logaddexp(nxt[prefix][1], pnb + p)  # collapsed repeat
                else:
                    nxt[ext][1] = np.logaddexp(nxt[ext][1], total + p)
        ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    return list(max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0])


def decode_batch(logits: torch.Tensor, lens: torch.Tensor, tokenizer, beam_size: int = 1) -> list[str]:
    """logits [B, T, V] -> texts."""
    if beam_size <= 1:
        return [tokenizer.decode(ids) for ids in greedy_ids(logits, lens)]
    log_probs = logits.float().log_softmax(-1)
    return [tokenizer.decode(prefix_beam_ids(log_probs[b, : int(lens[b])], beam_size)) for b in range(len(lens))]


class CtcRecognizer:
    """The baseline system: waveforms -> fbank -> CMVN -> conformer -> CTC decoding."""

    def __init__(self, model, tokenizer, cfg_dict: dict, cmvn, beam_size: int = 1, batch_size: int = 16):
        from llm_asr.config import FeaturesConfig

        self.model, self.tokenizer, self.cmvn = model.eval(), tokenizer, cmvn
        self.fcfg = FeaturesConfig.model_validate(cfg_dict["features"])
        self.beam_size, self.batch_size = beam_size, batch_size

    @classmethod
    def from_dir(cls, model_dir: str | Path, beam_size: int | None = None) -> "CtcRecognizer":
        from llm_asr.features import load_cmvn
        from llm_asr.models.encoder import load_ctc_model

        model, tokenizer, cfg_dict = load_ctc_model(model_dir)
        dec = cfg_dict.get("decoding", {})
        return cls(model, tokenizer, cfg_dict, load_cmvn(Path(model_dir) / "cmvn.json"),
                   beam_size=beam_size or dec.get("beam_size", 1), batch_size=dec.get("batch_size", 16))

    @torch.no_grad()
    def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        from llm_asr.features import compute_fbank

        feats = [compute_fbank(w, self.fcfg) for w in waves]
        order = sorted(range(len(feats)), key=lambda i: -len(feats[i]))  # similar lengths per batch
        texts: dict[int, str] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x, lens = pad_features([feats[i] for i in idx])
            logits, out_lens = self.model(apply_cmvn(x, lens, self.cmvn), lens)
            for i, text in zip(idx, decode_batch(logits, out_lens, self.tokenizer, self.beam_size)):
                texts[i] = text
        return [texts[i] for i in range(len(feats))]
