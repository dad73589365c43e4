"""The stage-two training task for the shared trainer (see llm_asr.training.trainer).

Batches: CMVN-normalised fbank, LLM token ids of each transcript, and CTC targets when the
auxiliary CTC loss is on. Loss: next-token cross-entropy on transcript + EOS, plus
`aux_ctc_weight` x CTC loss on the encoder. Learning rates per part (encoder, projector,
LoRA); LoRA stays frozen for the first `warmup_projector_steps` steps. Validation adds the
listening check: the loss with each transcript paired with another utterance's audio; a
large `listen_gap` (shuffled - matched) means the LLM uses the audio.
"""

from __future__ import annotations

from typing import Any

import jiwer
import torch
from lhotse import CutSet

from llm_asr.config import SpeechLlmConfig
from llm_asr.data.batching import Cmvn, collate_features
from llm_asr.models.align_task import TokenTargets
from llm_asr.models.ctc_task import ctc_loss
from llm_asr.models.encoder_cache import EncoderCache
from llm_asr.models.speech_llm import SpeechLlm
from llm_asr.models.speech_llm_dir import load_trained_state, trained_state

class SpeechLlmTask:
    select_metric = "loss"

    def __init__(self, model: SpeechLlm, llm_tok: Any, ctc_tok: Any, cmvn: Cmvn | None, scfg: SpeechLlmConfig,
                 decode: Any | None = None, cache: EncoderCache | None = None,
                 token_targets: TokenTargets | None = None):
        self.model, self.llm_tok, self.ctc_tok, self.cmvn, self.scfg = model, llm_tok, ctc_tok, cmvn, scfg
        self.decode = decode  # (model, feats, lens, encoded) -> list[str], for a small dev WER sample
        self.cache = cache  # a frozen encoder's outputs, computed once per utterance
        self.token_targets = token_targets  # token_ctc: the aux token-CTC loss (speech_llm.align.aux_weight)

    def collate(self, cuts: CutSet) -> dict[str, Any]:
        texts = [c.supervisions[0].text for c in cuts]
        if self.cache is not None:
            enc, enc_lens, lens = self.cache.batch(cuts)
            batch = {"feats": None, "lens": lens, "enc": enc, "enc_lens": enc_lens}
        else:
            feats, lens = collate_features(cuts, self.cmvn)
            batch = {"feats": feats, "lens": lens}
        batch.update(texts=texts, targets=[self.llm_tok(t, add_special_tokens=False).input_ids for t in texts])
        if self.token_targets is not None and self.scfg.align.aux_weight > 0:
            batch["tok_targets"], batch["tok_lens"] = self.token_targets.batch(texts)
        if self.scfg.aux_ctc_weight > 0:
            ids = [torch.tensor(self.ctc_tok.encode(t), dtype=torch.long) for t in texts]
            batch["ctc_targets"] = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True)  # [B, U]
            batch["ctc_lens"] = torch.tensor([len(i) for i in ids])
        return batch

    @staticmethod
    def encoded(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (batch["enc"], batch["enc_lens"]) if "enc" in batch else None

    def loss(self, model: SpeechLlm, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch["feats"], batch["lens"], batch["targets"], encoded=self.encoded(batch))
        loss, stats = out["loss"], {"llm_loss": float(out["loss"].detach()), "llm_len": float(out["llm_len"])}
        if "tok_targets" in batch:
            tok = ctc_loss(out["token_logits"], out["token_lens"], batch["tok_targets"], batch["tok_lens"])
            loss = loss + self.scfg.align.aux_weight * tok
            stats["token_ctc_loss"] = float(tok.detach())
        if self.scfg.aux_ctc_weight > 0:
            ctc = ctc_loss(out["ctc_logits"], out["ctc_lens"], batch["ctc_targets"], batch["ctc_lens"])
            loss = loss + self.scfg.aux_ctc_weight * ctc
            stats["ctc_loss"] = float(ctc.detach())
        return loss, stats

    def param_groups(self, model: SpeechLlm) -> list[dict[str, Any]]:
        """Per-part learning rates; LoRA is listed even while frozen (on_step unfreezes it)."""
        base, wd = self.scfg.train.lr, self.scfg.train.weight_decay
        encoder = list(model.encoder.parameters()) + (list(model.ctc_head.parameters()) if model.ctc_head else [])
        parts = [
            ([p for p in encoder if p.requires_grad], base * self.scfg.encoder_lr_scale),
            ([p for p in model.projector.parameters() if p.requires_grad], base * self.scfg.projector_lr_scale),
            ([p for n, p in model.llm.named_parameters() if ".lora_" in n], base),
        ]
        groups = []
        for params, lr in parts:
            groups.append({"params": [p for p in params if p.dim() >= 2], "lr": lr, "weight_decay": wd})
            groups.append({"params": [p for p in params if p.dim() < 2], "lr": lr, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    def on_step(self, step: int, model: SpeechLlm) -> None:
        """Projector-only warm-up: LoRA learns only once the audio embeddings make sense."""
        if self.scfg.lora.rank == 0:
            return
        train_lora = step >= self.scfg.warmup_projector_steps
        for n, p in model.llm.named_parameters():
            if ".lora_" in n:
                p.requires_grad_(train_lora)

    def validate(self, model: SpeechLlm, batches: list[dict[str, Any]]) -> dict[str, float]:
        total, shuffled, n = 0.0, 0.0, 0
        for b in batches:
            if len(b["texts"]) < 2:
                continue
            k = len(b["texts"])
            total += float(model(b["feats"], b["lens"], b["targets"], encoded=self.encoded(b))["loss"]) * k
            shuffled += float(model(b["feats"], b["lens"], b["targets"], shuffle_audio=True,
                                    encoded=self.encoded(b))["loss"]) * k
            n += k
        metrics = {}
        if n:
            metrics = {"listen_matched": total / n, "listen_shuffled": shuffled / n,
                       "listen_gap": (shuffled - total) / n}
        if self.decode is not None and batches and self.scfg.sample_wer_utterances:
            b = batches[0]
            k = min(self.scfg.sample_wer_utterances, len(b["texts"]))
            enc = self.encoded(b)
            hyps = self.decode(model, None if b["feats"] is None else b["feats"][:k], b["lens"][:k],
                               None if enc is None else (enc[0][:k], enc[1][:k]))
            metrics["sample_wer"] = 100 * jiwer.wer(b["texts"][:k], hyps)
        return metrics

    def checkpoint_state(self, model: SpeechLlm) -> dict[str, torch.Tensor]:
        return trained_state(model)

    def load_checkpoint_state(self, model: SpeechLlm, state: dict[str, torch.Tensor]) -> None:
        load_trained_state(model, state)

