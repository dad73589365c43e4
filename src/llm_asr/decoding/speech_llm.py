"""The speech-LLM as a Recognizer: waveforms -> features -> CMVN -> encoder -> projector -> LLM decoding."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_asr.config import DecodingConfig, FeaturesConfig
from llm_asr.data.batching import apply_cmvn, pad_features
from llm_asr.errors import UserError
from llm_asr.decoding.ctc_prefix import CtcPrefixScorer, token_classes
from llm_asr.decoding.generate import GenerationSettings, generate, token_budget
from llm_asr.models.speech_llm import SpeechLlm


def settings(dcfg: DecodingConfig, use_cache: bool = True) -> GenerationSettings:
    return GenerationSettings(
        beam_size=dcfg.beam_size,
        repetition_penalty=dcfg.repetition_penalty,
        no_repeat_ngram_size=dcfg.no_repeat_ngram_size,
        max_repeat_run=dcfg.max_repeat_run,
        use_cache=use_cache,
        ctc_weight=dcfg.ctc_weight,
        ctc_candidates=dcfg.ctc_candidates,
    )


def ctc_scorer(model: SpeechLlm, enc: dict[str, Any], dcfg: DecodingConfig) -> CtcPrefixScorer | None:
    """The token_ctc head's prefix scorer for joint decoding, or None when `ctc_weight` is 0."""
    if dcfg.ctc_weight <= 0:
        return None
    if "token_logits" not in enc:
        raise UserError(f"decoding.ctc_weight={dcfg.ctc_weight} needs the token_ctc projector's CTC head, "
                        f"and this model's projector is {type(model.projector).__name__}: "
                        "decode it with --set decoding.ctc_weight=0")
    vocab = model.base_llm.get_output_embeddings().weight.shape[0]
    classes = token_classes(model.projector.token_ids, vocab)
    return CtcPrefixScorer(enc["token_logits"].float().log_softmax(-1), enc["token_lens"], classes)


@torch.no_grad()
def decode_features(model: SpeechLlm, tok: Any, feats: torch.Tensor | None, lens: torch.Tensor,
                    dcfg: DecodingConfig, frame_shift_ms: float, use_cache: bool = True,
                    encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[str]:
    """Normalised features [B, T, F] (or a frozen encoder's outputs `encoded`; `lens` are the
    feature lengths either way) -> texts; each row's token budget follows its duration."""
    enc = model.encode(feats, lens, encoded)
    inp = model.build_inputs(enc["emb"], enc["emb_lens"])
    budgets = token_budget([float(n) * frame_shift_ms / 1000 for n in lens], dcfg.tokens_per_second,
                           dcfg.min_new_tokens_bound)
    ids = generate(model, inp, budgets, settings(dcfg, use_cache), ctc_scorer(model, enc, dcfg))
    return [re.sub(r"\s+", " ", tok.decode(i, skip_special_tokens=True)).strip() for i in ids]


class SpeechLlmRecognizer:
    def __init__(self, model: SpeechLlm, tok: Any, fcfg: FeaturesConfig, cmvn: Any, dcfg: DecodingConfig):
        self.model, self.tok, self.fcfg, self.cmvn, self.dcfg = model.eval(), tok, fcfg, cmvn, dcfg
        self.device = next(model.parameters()).device
        self.decoding = "greedy" if dcfg.beam_size <= 1 else f"beam search {dcfg.beam_size}"
        if dcfg.ctc_weight > 0:
            self.decoding += f" + token CTC prefix score (weight {dcfg.ctc_weight:g})"

    @classmethod
    def from_dir(cls, model_dir: str | Path, decoding_cfg: DecodingConfig | None = None) -> "SpeechLlmRecognizer":
        """Everything comes from the directory (the LLM from its reference); decoding settings
        from `decoding_cfg`, else the ones saved with the model."""
        from llm_asr.features import load_cmvn
        from llm_asr.models.speech_llm_dir import load_model_dir

        model, tok, cfg = load_model_dir(Path(model_dir))
        if hasattr(model.llm, "merge_adapter"):
            # LoRA folded into q/k/v/o (W + s B A): the same function without 8 small matmuls per layer
            # and step (measured 7% less LLM time in decoding); this model is never trained again
            model.llm.merge_adapter()
        if torch.cuda.is_available():
            model = model.cuda()
        return cls(model, tok, cfg.features, load_cmvn(Path(model_dir) / "cmvn.json"), decoding_cfg or cfg.decoding)

    def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        from llm_asr.features import compute_features

        feats = [compute_features(w, self.fcfg) for w in waves]
        order = sorted(range(len(feats)), key=lambda i: -len(feats[i]))  # similar lengths per batch
        texts: dict[int, str] = {}
        bs = self.dcfg.batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            x, lens = pad_features([feats[i] for i in idx])
            x = apply_cmvn(x, lens, self.cmvn).to(self.device)
            out = decode_features(self.model, self.tok, x, lens.to(self.device), self.dcfg, self.fcfg.frame_shift_ms)
            texts.update(zip(idx, out))
        return [texts[i] for i in range(len(feats))]
