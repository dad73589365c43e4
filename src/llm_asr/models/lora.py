"""LoRA (peft) on the LLM's q/k/v/o projections only; rank 0 means a frozen LLM.

`apply_lora` freezes every LLM weight, then (rank > 0) wraps the LLM in a peft model whose
only trainable tensors are the `lora_A`/`lora_B` matrices of the four attention
projections. `check_trainable` states that set exactly, so a wrong target list or a
forgotten `requires_grad` fails loudly instead of silently training the wrong thing.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from llm_asr.config import LoraConfig

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_LORA_PARAM = re.compile(r"\.(q_proj|k_proj|v_proj|o_proj)\.lora_(A|B)\.[^.]+\.weight$")


def apply_lora(llm: nn.Module, cfg: LoraConfig) -> nn.Module:
    for p in llm.parameters():
        p.requires_grad_(False)
    if cfg.rank == 0:
        return llm
    if set(cfg.target_modules) != set(ATTENTION_PROJECTIONS):
        raise ValueError(f"LoRA targets must be exactly {ATTENTION_PROJECTIONS}, got {cfg.target_modules}")
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(ATTENTION_PROJECTIONS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(llm, peft_cfg)
    check_trainable(model, cfg.rank)
    return model


def expected_lora_names(llm: nn.Module) -> set[str]:
    return {n for n, _ in llm.named_parameters() if _LORA_PARAM.search(n)}


def check_trainable(llm: nn.Module, rank: int) -> None:
    """Trainable LLM parameters are exactly the q/k/v/o LoRA matrices (none when rank == 0)."""
    trainable = {n for n, p in llm.named_parameters() if p.requires_grad}
    if rank == 0:
        if trainable:
            raise AssertionError(f"frozen LLM has trainable parameters: {sorted(trainable)[:5]}")
        return
    lora = expected_lora_names(llm)
    layers = llm.get_base_model().config.num_hidden_layers
    if len(lora) != 2 * len(ATTENTION_PROJECTIONS) * layers:
        raise AssertionError(f"expected LoRA on q/k/v/o of all {layers} layers, found {len(lora)} matrices")
    if trainable != lora:
        extra, missing = sorted(trainable - lora), sorted(lora - trainable)
        raise AssertionError(f"trainable set is wrong: extra {extra[:5]}, missing {missing[:5]}")


def save_adapter(llm: nn.Module, out_dir: Path) -> None:
    """peft's own format (adapter_config.json + adapter_model.safetensors); nothing if frozen."""
    if hasattr(llm, "peft_config"):
        llm.save_pretrained(str(out_dir))


def load_adapter(llm: nn.Module, adapter_dir: Path, cfg: LoraConfig) -> nn.Module:
    """Wrap a fresh LLM like `apply_lora` did, then load the adapter strictly."""
    model = apply_lora(llm, cfg)
    if cfg.rank == 0:
        return model
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    weights = load_peft_weights(str(adapter_dir), device="cpu")
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if unexpected or missing or len(weights) != len(expected_lora_names(model)):
        raise RuntimeError(f"adapter in {adapter_dir} does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.eval()
    return model


def llm_trainable_parameters(llm: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in llm.parameters() if p.requires_grad]
