"""Alignment pretraining of the token_ctc projector, a task for the shared trainer.

Before the LLM runs, the projector learns to point every stacked frame at the LLM tokens it
spoke: CTC over the LLM's own vocabulary (classes = models/projector.llm_token_vocab, scored
against the LLM's frozen input embeddings), on the frozen encoder's cached outputs. No LLM
forward, so a step costs milliseconds and thousands fit in minutes (the paper's open question
1; LegoSLM, arXiv 2505.11352). Validation: token-CTC loss and the greedy token-CTC WER on dev.
"""

from __future__ import annotations

from typing import Any

import jiwer
import torch
from lhotse import CutSet
from torch import nn

from llm_asr.models.ctc_task import ctc_loss
from llm_asr.models.encoder_cache import EncoderCache


class TokenTargets:
    """Transcript -> token-CTC class ids (1..K; 0 is blank) and greedy class ids -> text."""

    def __init__(self, token_ids: torch.Tensor, llm_tokenizer: Any) -> None:
        self.tok = llm_tokenizer
        self.ids = token_ids.tolist()
        self.index = {t: i + 1 for i, t in enumerate(self.ids)}
        self.unknown = 0  # transcript tokens outside the vocabulary (dev/test words never in train), dropped

    def encode(self, text: str) -> list[int]:
        out = []
        for t in self.tok(text, add_special_tokens=False).input_ids:
            if t in self.index:
                out.append(self.index[t])
            else:
                self.unknown += 1
        return out

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [torch.tensor(self.encode(t) or [0], dtype=torch.long) for t in texts]  # [0]: pad, len 0 below
        lens = torch.tensor([len(i) if int(i[0]) else 0 for i in ids])
        return torch.nn.utils.rnn.pad_sequence(ids, batch_first=True), lens  # [B, U], [B]

    def greedy_text(self, logits: torch.Tensor, lens: torch.Tensor) -> list[str]:
        """CTC collapse of the per-frame argmax, written back with the LLM's tokenizer."""
        best = logits.argmax(-1).cpu()  # [B, N]
        out = []
        for i in range(best.shape[0]):
            row, prev, ids = best[i, : int(lens[i])].tolist(), 0, []
            for c in row:
                if c != 0 and c != prev:
                    ids.append(self.ids[c - 1])
                prev = c
            out.append(" ".join(self.tok.decode(ids, skip_special_tokens=True).split()))
        return out


class _Aligner(nn.Module):
    """The projector alone: what alignment pretraining trains and checkpoints."""

    def __init__(self, projector: nn.Module) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, lens, _ = self.projector.token_logits(enc, enc_lens)
        return logits, lens


class TokenAlignTask:
    select_metric = "token_wer"

    def __init__(self, projector: nn.Module, cache: EncoderCache, targets: TokenTargets) -> None:
        self.model, self.cache, self.targets = _Aligner(projector), cache, targets

    def collate(self, cuts: CutSet) -> dict[str, Any]:
        enc, enc_lens, _ = self.cache.batch(cuts)
        texts = [c.supervisions[0].text for c in cuts]
        targets, target_lens = self.targets.batch(texts)
        return {"enc": enc, "enc_lens": enc_lens, "targets": targets, "target_lens": target_lens, "texts": texts}

    def loss(self, model: _Aligner, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits, lens = model(batch["enc"], batch["enc_lens"])
        loss = ctc_loss(logits, lens, batch["targets"], batch["target_lens"])
        infeasible = float((batch["target_lens"] > lens).float().mean())  # more tokens than frames
        return loss, {"infeasible": infeasible}

    def validate(self, model: _Aligner, batches: list[dict[str, Any]]) -> dict[str, float]:
        refs, hyps = [], []
        for b in batches:
            logits, lens = model(b["enc"], b["enc_lens"])
            refs += b["texts"]
            hyps += self.targets.greedy_text(logits, lens)
        return {"token_wer": 100 * jiwer.wer(refs, hyps)} if refs else {}
