"""LoRA targets exactly q/k/v/o; rank 0 freezes the LLM; adapters reload strictly."""

import pytest
import torch

from llm_asr.config import LoraConfig
from llm_asr.models.lora import apply_lora, check_trainable, load_adapter, save_adapter
from tests.speech_llm.helpers import tiny_speech_llm


def test_trainable_set_is_exactly_qkvo_lora(tiny_llm_factory) -> None:
    llm, _ = tiny_llm_factory()
    layers = llm.config.num_hidden_layers
    model = apply_lora(llm, LoraConfig(rank=4, alpha=8.0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        f"base_model.model.model.layers.{i}.self_attn.{proj}.lora_{ab}.default.weight"
        for i in range(layers) for proj in ("q_proj", "k_proj", "v_proj", "o_proj") for ab in "AB"
    }
    assert trainable == expected
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == layers * 4 * 2 * 4 * 64


def test_check_trainable_catches_extra_parameters(tiny_llm_factory) -> None:
    llm, _ = tiny_llm_factory()
    model = apply_lora(llm, LoraConfig(rank=4))
    model.get_base_model().lm_head.weight.requires_grad_(True)
    with pytest.raises(AssertionError, match="extra"):
        check_trainable(model, 4)


def test_other_targets_are_rejected(tiny_llm_factory) -> None:
    llm, _ = tiny_llm_factory()
    with pytest.raises(ValueError):
        apply_lora(llm, LoraConfig(rank=4, target_modules=("q_proj", "v_proj")))


def test_frozen_llm_gets_no_gradient(tiny_llm_factory) -> None:
    llm, tok = tiny_llm_factory()
    model = tiny_speech_llm(llm, tok, rank=0)
    out = model(torch.randn(2, 64, 80), torch.tensor([64, 40]), [[10, 11], [12]])
    out["loss"].backward()
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(not p.requires_grad for p in model.llm.parameters())
    assert model.projector.proj.weight.grad is not None
    assert model.encoder.conv.weight.grad is not None


def test_adapter_roundtrip_is_strict_and_exact(tiny_llm_factory, tmp_path) -> None:
    llm, tok = tiny_llm_factory()
    fresh, _ = tiny_llm_factory()
    cfg = LoraConfig(rank=4, alpha=8.0)
    model = apply_lora(llm, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # B starts at zero: make the adapter matter
    save_adapter(model, tmp_path)
    loaded = load_adapter(fresh, tmp_path, cfg)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model.eval()(ids).logits, loaded(ids).logits)
    with pytest.raises(RuntimeError):
        load_adapter(tiny_llm_factory()[0], tmp_path, LoraConfig(rank=2))
