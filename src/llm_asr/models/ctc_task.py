"""The CTC training task for the shared trainer: batches of features + token ids, CTC loss, dev WER."""

from __future__ import annotations

import random
from typing import Any

import jiwer
import torch
import torch.nn.functional as F
from lhotse import CutSet

from llm_asr.config import CtcConfig, FeaturesConfig
from llm_asr.data.batching import Cmvn, apply_cmvn, collate_features, pad_features
from llm_asr.decoding.ctc import greedy_ids
from llm_asr.models.encoder import CtcModel
from llm_asr.models.tokenizer import BLANK, CtcTokenizer


def ctc_loss(logits: torch.Tensor, out_lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor):
    """Mean CTC loss per target token (nats/token), computed in fp32 even under autocast."""
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [T', B, V]
    total = F.ctc_loss(log_probs, targets, out_lens, target_lens, blank=BLANK, reduction="sum", zero_infinity=True)
    return total / target_lens.sum().clamp(min=1)


class CtcTask:
    select_metric = "wer"  # best checkpoint by dev WER of greedy decoding

    def __init__(self, model: CtcModel, tokenizer: CtcTokenizer, cmvn: Cmvn | None, ccfg: CtcConfig,
                 fcfg: FeaturesConfig):
        self.model, self.tokenizer, self.cmvn, self.ccfg, self.fcfg = model, tokenizer, cmvn, ccfg, fcfg

    def _targets(self, cuts: CutSet) -> dict[str, Any]:
        texts = [c.supervisions[0].text for c in cuts]
        ids = [torch.tensor(self.tokenizer.encode(t), dtype=torch.long) for t in texts]
        target_lens = torch.tensor([len(i) for i in ids], dtype=torch.long)
        targets = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True)  # [B, U_max]
        return {"targets": targets, "target_lens": target_lens, "texts": texts}

    def _perturbed_features(self, cuts: CutSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Speed perturbation re-computes the features from audio (python `random`: restored on resume)."""
        from llm_asr.features import compute_features

        factors = (1.0,) + tuple(self.ccfg.augment.speed_perturb)
        mats = []
        for c in cuts:
            f = random.choice(factors)
            mats.append(c.load_features() if f == 1.0 else
                        compute_features(c.drop_features().perturb_speed(f).load_audio()[0], self.fcfg))
        feats, lens = pad_features(mats)
        return apply_cmvn(feats, lens, self.cmvn), lens

    def collate(self, cuts: CutSet) -> dict[str, Any]:
        if self.ccfg.augment.speed_perturb:
            feats, lens = self._perturbed_features(cuts)
        else:
            feats, lens = collate_features(cuts, self.cmvn)
        return {"feats": feats, "lens": lens, **self._targets(cuts)}

    def collate_valid(self, cuts: CutSet) -> dict[str, Any]:
        feats, lens = collate_features(cuts, self.cmvn)
        return {"feats": feats, "lens": lens, **self._targets(cuts)}

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits, out_lens = model(batch["feats"], batch["lens"])  # [B, T', V]
        loss = ctc_loss(logits, out_lens, batch["targets"], batch["target_lens"])
        return loss, {"frames_per_token": float(out_lens.sum() / batch["target_lens"].sum().clamp(min=1))}

    def validate(self, model: torch.nn.Module, batches: list[dict[str, Any]]) -> dict[str, float]:
        refs, hyps = [], []
        for b in batches:
            logits, out_lens = model(b["feats"], b["lens"])
            hyps += [self.tokenizer.decode(ids) for ids in greedy_ids(logits, out_lens)]
            refs += b["texts"]
        return {"wer": 100 * jiwer.wer(refs, hyps), "cer": 100 * jiwer.cer(refs, hyps)}
