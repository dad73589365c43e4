"""Small builders shared by the speech_llm tests (real modules, tiny sizes)."""

from __future__ import annotations

import torch
from torch import nn

from llm_asr.config import LoraConfig
from llm_asr.models.lora import apply_lora
from llm_asr.models.projector import LinearProjector
from llm_asr.models.speech_llm import SpeechLlm


class FrameEncoder(nn.Module):
    """Conv subsampling x4 (10 ms -> 40 ms) + a linear layer: a minimal trainable encoder."""

    def __init__(self, feat_dim: int = 80, dim: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv1d(feat_dim, dim, kernel_size=4, stride=4)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x.transpose(1, 2)).transpose(1, 2), lens // 4


def tiny_speech_llm(llm: nn.Module, tok, rank: int = 4, prompt_ids: list[int] | None = None) -> SpeechLlm:
    torch.manual_seed(0)
    llm = apply_lora(llm, LoraConfig(rank=rank, alpha=8.0, dropout=0.0))
    hidden = llm.get_input_embeddings().weight.shape[1]
    return SpeechLlm(
        FrameEncoder(), None, LinearProjector(16, hidden, 160), llm,
        bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, prompt_ids=prompt_ids,
    )
