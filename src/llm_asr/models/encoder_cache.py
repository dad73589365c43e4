"""A frozen encoder's outputs, computed once per utterance and kept in memory.

Stage two with `speech_llm.freeze_encoder` never changes the encoder, so its output for an
utterance is the same at every epoch: the alignment pretraining and the LLM training read it
from here instead of running the conformer again (16 h of train audio at 40 ms x 144 dims is
~0.8 GB in fp32). The encoder runs in eval mode (no SpecAugment, no dropout).
"""

from __future__ import annotations

import torch
from lhotse import CutSet

from llm_asr.data.batching import Cmvn, collate_features


class EncoderCache:
    def __init__(self, encoder: torch.nn.Module, cmvn: Cmvn | None) -> None:
        self.encoder, self.cmvn = encoder, cmvn
        self.store: dict[str, tuple[torch.Tensor, int]] = {}  # cut id -> (enc [T', D], feature frames)

    @torch.no_grad()
    def batch(self, cuts: CutSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(enc [B, T', D], enc_lens [B], feature lengths [B]) for `cuts`, in their order."""
        missing = [c for c in cuts if c.id not in self.store]
        if missing:
            self.encoder.eval()
            device = next(self.encoder.parameters()).device
            feats, lens = collate_features(CutSet.from_cuts(missing), self.cmvn)
            enc, enc_lens = self.encoder(feats.to(device), lens.to(device))  # [b, T', D]
            for i, c in enumerate(missing):
                self.store[c.id] = (enc[i, : int(enc_lens[i])].float().cpu().clone(), int(lens[i]))
        rows = [self.store[c.id] for c in cuts]
        enc = torch.nn.utils.rnn.pad_sequence([r[0] for r in rows], batch_first=True)  # [B, T', D]
        return enc, torch.tensor([len(r[0]) for r in rows]), torch.tensor([r[1] for r in rows])

    def __len__(self) -> int:
        return len(self.store)
