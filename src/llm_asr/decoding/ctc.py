"""CTC decoding: greedy (best path), prefix beam search, and lexicon beam search with the word n-gram
LM that `train-ctc` writes into the model directory (`LmCtcDecoder`: torchaudio's flashlight-text
decoder); `CtcRecognizer` for the baseline system."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from llm_asr.data.batching import apply_cmvn, pad_features
from llm_asr.errors import UserError
from llm_asr.models.tokenizer import BLANK

LM_FILE, LEXICON_FILE = "lm.arpa", "lexicon.txt"  # in the CTC model directory (stages/train_ctc.py)


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


def lexicon_spelling(tokenizer):
    """(spell, silence piece) for the lexicon decoder. A character vocabulary spells a word letter
    by letter and its word-boundary piece "\u2581" is the silence between words; a subword vocabulary
    spells it as the tokenizer segments it (the "\u2581" is inside the first piece), with "<unk>" as
    a silence the CTC never emits. `spell(word)` is None when the vocabulary cannot write the word."""
    pieces = tokenizer.pieces
    known = set(pieces[1:]) - {"<unk>"}
    if all(len(p) == 1 for p in known):
        return (lambda w: list(w) if w and all(ch in known for ch in w) else None), "\u2581"

    def spell(word: str) -> list[str] | None:
        out = tokenizer.sp.encode(word, out_type=str)
        return out if out and all(p in known for p in out) else None

    return spell, "<unk>"


class LmCtcDecoder:
    """Lexicon-constrained CTC beam search with the model directory's word n-gram LM (shallow
    fusion: acoustic log-prob + weight * LM log-prob + word_score per word)."""

    def __init__(self, model_dir: str | Path, tokenizer, lcfg) -> None:
        from torchaudio.models.decoder import ctc_decoder

        model_dir = Path(model_dir)
        for name in (LM_FILE, LEXICON_FILE):
            if not (model_dir / name).is_file():
                raise UserError(f"{model_dir} has no {name} for LM decoding: retrain it with `llm-asr train-ctc` "
                                "(it writes the LM), or decode without one: --set ctc.lm.weight=0")
        _, silence = lexicon_spelling(tokenizer)
        with (model_dir / LM_FILE).open(encoding="utf-8") as f:  # the ARPA header: "ngram N=count" per order
            order = sum(1 for line in itertools.takewhile(lambda x: x.strip() != "\\1-grams:", f)
                        if line.startswith("ngram "))
        self.describe = (f"lexicon beam search {lcfg.beam_size} + word {order}-gram LM "
                         f"(weight {lcfg.weight:g}, word score {lcfg.word_score:g})")
        self.decoder = ctc_decoder(
            lexicon=str(model_dir / LEXICON_FILE), tokens=tokenizer.pieces, lm=str(model_dir / LM_FILE),
            nbest=1, beam_size=lcfg.beam_size, beam_size_token=min(lcfg.beam_size_token, tokenizer.num_classes),
            beam_threshold=lcfg.beam_threshold, lm_weight=lcfg.weight, word_score=lcfg.word_score,
            sil_score=0.0, blank_token=tokenizer.pieces[BLANK], sil_token=silence, unk_word="<unk>",
        )

    def best(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list:
        """log-probs [B, T, V] -> each utterance's best torchaudio CTCHypothesis (None if none survived)."""
        hyps = self.decoder(log_probs.float().cpu().contiguous(), lens.to(torch.int32).cpu())
        return [h[0] if h else None for h in hyps]

    def __call__(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list[str]:
        return [" ".join(h.words) if h else "" for h in self.best(log_probs, lens)]


def decode_batch(logits: torch.Tensor, lens: torch.Tensor, tokenizer, beam_size: int = 1,
                 lm: LmCtcDecoder | None = None) -> list[str]:
    """logits [B, T, V] -> texts: LM beam search when `lm` is given, else greedy or prefix beam."""
    if lm is not None:
        return lm(logits.float().log_softmax(-1), lens)
    if beam_size <= 1:
        return [tokenizer.decode(ids) for ids in greedy_ids(logits, lens)]
    log_probs = logits.float().log_softmax(-1)
    return [tokenizer.decode(prefix_beam_ids(log_probs[b, : int(lens[b])], beam_size)) for b in range(len(lens))]


class CtcRecognizer:
    """The baseline system: waveforms -> features -> CMVN -> encoder -> CTC decoding."""

    def __init__(self, model, tokenizer, cfg_dict: dict, cmvn, beam_size: int = 1, batch_size: int = 16,
                 lm: LmCtcDecoder | None = None):
        from llm_asr.config import FeaturesConfig

        self.model, self.tokenizer, self.cmvn = model.eval(), tokenizer, cmvn
        self.fcfg = FeaturesConfig.model_validate(cfg_dict["features"])
        self.beam_size, self.batch_size, self.lm = beam_size, batch_size, lm
        self.decoding = lm.describe if lm else "greedy" if beam_size <= 1 else f"prefix beam search {beam_size}"

    @classmethod
    def from_dir(cls, model_dir: str | Path, beam_size: int | None = None, lm_cfg=None) -> "CtcRecognizer":
        """`lm_cfg` (a CtcLmConfig) defaults to the model's own `ctc.lm`; weight 0 decodes without the LM."""
        from llm_asr.config import CtcLmConfig
        from llm_asr.features import load_cmvn
        from llm_asr.models.encoder import load_ctc_model

        model, tokenizer, cfg_dict = load_ctc_model(model_dir)
        dec = cfg_dict.get("decoding", {})
        lm_cfg = lm_cfg or CtcLmConfig.model_validate(cfg_dict.get("ctc", {}).get("lm", {}))
        lm = LmCtcDecoder(model_dir, tokenizer, lm_cfg) if lm_cfg.weight > 0 else None
        return cls(model, tokenizer, cfg_dict, load_cmvn(Path(model_dir) / "cmvn.json"),
                   beam_size=beam_size or dec.get("beam_size", 1), batch_size=dec.get("batch_size", 16), lm=lm)

    @torch.no_grad()
    def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        from llm_asr.features import compute_features

        feats = [compute_features(w, self.fcfg) for w in waves]
        order = sorted(range(len(feats)), key=lambda i: -len(feats[i]))  # similar lengths per batch
        texts: dict[int, str] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x, lens = pad_features([feats[i] for i in idx])
            logits, out_lens = self.model(apply_cmvn(x, lens, self.cmvn), lens)
            for i, text in zip(idx, decode_batch(logits, out_lens, self.tokenizer, self.beam_size, self.lm)):
                texts[i] = text
        return [texts[i] for i in range(len(feats))]
