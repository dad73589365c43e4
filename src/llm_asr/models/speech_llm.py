"""The speech-LLM: CTC-pretrained encoder -> projector -> causal LM (frozen or LoRA).

Sequence layout, left-padded so training and batched decoding share one code path:
    [pad ...][head][audio embeddings][prompt][BOS][answer] transcript [EOS]
(head, prompt and answer are optional token strings, e.g. a chat template around the audio.)
Labels are -100 everywhere except the transcript tokens and EOS (so the model learns to
stop). Position ids count real tokens only, which makes a left-padded row compute exactly
what the same row computes alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

IGNORE = -100


@dataclass
class LlmInputs:
    embeds: torch.Tensor  # [B, L, H]
    mask: torch.Tensor  # [B, L] 1 = real token
    positions: torch.Tensor  # [B, L]
    labels: torch.Tensor | None  # [B, L], -100 where not a target


class SpeechLlm(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        ctc_head: nn.Module | None,
        projector: nn.Module,
        llm: nn.Module,
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        prompt_ids: list[int] | None = None,
        head_ids: list[int] | None = None,
        answer_ids: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.ctc_head = ctc_head
        self.projector = projector
        self.llm = llm
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.prompt_ids = list(prompt_ids or [])
        self.head_ids = list(head_ids or [])  # before the audio
        self.answer_ids = list(answer_ids or [])  # after BOS, before the transcript (not a target)

    # ---- pieces -------------------------------------------------------------------------
    @property
    def base_llm(self) -> nn.Module:
        """The transformers causal LM (inside peft's wrapper when LoRA is on)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base_llm.get_input_embeddings()(ids)

    def encode(self, feats: torch.Tensor | None, feat_lens: torch.Tensor,
               encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """feats [B, T, F] -> audio embeddings [B, N, H] (+ encoder output, CTC and token-CTC logits).
        `encoded` = (enc [B, T', D], enc_lens): a frozen encoder's outputs computed earlier
        (models/encoder_cache.EncoderCache); feats are then not needed."""
        if encoded is not None:
            enc, enc_lens = encoded
        elif any(p.requires_grad for p in self.encoder.parameters()):
            enc, enc_lens = self.encoder(feats, feat_lens)  # [B, T', D] at 40 ms
        else:  # frozen encoder: no dropout, no graph
            self.encoder.eval()
            with torch.no_grad():
                enc, enc_lens = self.encoder(feats, feat_lens)
        ctc_logits = self.ctc_head(enc) if self.ctc_head is not None else None  # [B, T'*k, V]
        ctc_lens = self.ctc_head.output_lengths(enc_lens) if self.ctc_head is not None else enc_lens
        out = {"enc_lens": enc_lens, "ctc_logits": ctc_logits, "ctc_lens": ctc_lens}
        if hasattr(self.projector, "forward_all"):  # token_ctc: its token posteriors feed the aux loss
            out["emb"], out["emb_lens"], out["token_logits"], out["token_lens"] = self.projector.forward_all(
                enc, enc_lens)
        else:
            out["emb"], out["emb_lens"] = self.projector(enc, enc_lens, ctc_logits)  # [B, N, H]
        return out

    def build_inputs(
        self, emb: torch.Tensor, emb_lens: torch.Tensor, targets: list[list[int]] | None = None
    ) -> LlmInputs:
        """Left-padded `[head][audio][prompt][BOS][answer] (targets [EOS])`; labels only when targets are given."""
        b, _, h = emb.shape
        dev = emb.device
        head = self.embed_tokens(torch.tensor(self.head_ids, dtype=torch.long, device=dev)).to(emb.dtype)  # [P, H]
        prefix = torch.tensor(self.prompt_ids + [self.bos_id] + self.answer_ids, device=dev)
        tails = [prefix if targets is None else torch.cat([prefix, torch.tensor(t + [self.eos_id], device=dev)])
                 for t in (targets or [None] * b)]
        lens = [len(self.head_ids) + int(emb_lens[i]) + len(tails[i]) for i in range(b)]
        width = max(lens)
        embeds = emb.new_zeros(b, width, h)
        mask = torch.zeros(b, width, dtype=torch.long, device=dev)
        labels = torch.full((b, width), IGNORE, dtype=torch.long, device=dev) if targets is not None else None
        for i in range(b):
            a, tail = int(emb_lens[i]), tails[i]
            start = width - lens[i]
            embeds[i, start : start + len(head)] = head
            mask[i, start:] = 1
            start += len(head)
            embeds[i, start : start + a] = emb[i, :a]
            embeds[i, start + a : width] = self.embed_tokens(tail).to(emb.dtype)
            if labels is not None:
                n_target = len(targets[i]) + 1  # transcript + EOS
                # position p predicts token p+1: the label sits on the token being predicted
                labels[i, width - n_target : width] = tail[-n_target:]
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        return LlmInputs(embeds, mask, positions, labels)

    def hidden_states(self, inp: LlmInputs, **kw: Any) -> Any:
        """The decoder stack (LoRA layers included) without the vocabulary projection."""
        return self.base_llm.model(
            inputs_embeds=inp.embeds, attention_mask=inp.mask, position_ids=inp.positions, **kw
        )

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.base_llm.get_output_embeddings()(hidden)

    # ---- training -------------------------------------------------------------------------
    def token_loss(self, inp: LlmInputs) -> tuple[torch.Tensor, int]:
        """Mean next-token cross-entropy over label positions; the vocabulary projection only
        runs where there is a label (audio positions dominate the sequence)."""
        assert inp.labels is not None
        hidden = self.hidden_states(inp, use_cache=False).last_hidden_state  # [B, L, H]
        target = inp.labels[:, 1:]  # [B, L-1]
        sel = target != IGNORE
        logits = self.lm_head(hidden[:, :-1][sel])  # [K, V]
        loss = nn.functional.cross_entropy(logits.float(), target[sel])
        return loss, int(sel.sum())

    def forward(
        self, feats: torch.Tensor | None, feat_lens: torch.Tensor, targets: list[list[int]],
        shuffle_audio: bool = False, encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        enc = self.encode(feats, feat_lens, encoded)
        emb, emb_lens = enc["emb"], enc["emb_lens"]
        if shuffle_audio:  # the listening check: each transcript paired with another utterance's audio
            perm = torch.roll(torch.arange(emb.shape[0], device=emb.device), 1)
            emb, emb_lens = emb[perm], emb_lens[perm]
        inp = self.build_inputs(emb, emb_lens, targets)
        loss, n_tokens = self.token_loss(inp)
        return {"loss": loss, "tokens": n_tokens, "llm_len": inp.embeds.shape[1], **enc}
