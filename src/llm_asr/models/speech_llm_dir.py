"""Build a `SpeechLlm` from a CTC model + an LLM, and save/load its model directory.

The directory holds only what stage two trained, plus what inference needs to rebuild
the rest:
    config.json              the full run config, the LLM reference (source, name, sha256
                             of its weights) and the special token ids
    trained.pt               encoder (+ CTC head when used) + projector, loaded strictly
    adapter/                 the LoRA adapter in peft's format (absent when the LLM is frozen)
    cmvn.json, tokenizer.model   copied from the CTC model (feature stats, CTC pieces)
    whisper_encoder.json     copied from the CTC model when its encoder is Whisper (its shape)
    lm.arpa, lexicon.txt     copied from the CTC model when ctc_words reads LM-decoded words
Never a copy of the LLM: it is reloaded from its reference and its hash is checked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from llm_asr.config import Config
from llm_asr.errors import UserError
from llm_asr.models.lora import apply_lora, load_adapter, save_adapter
from llm_asr.models.projector import build_projector, piece_embeddings, space_index
from llm_asr.models.speech_llm import SpeechLlm
from llm_asr.training.checkpoint import atomic_save

SYSTEM = "speech-llm"
TRAINED = "trained.pt"
ADAPTER = "adapter"
_TRAINED_PREFIXES = ("encoder.", "ctc_head.", "projector.")


def uses_ctc_head(cfg: Config) -> bool:
    return cfg.speech_llm.projector in ("ctc_mix", "ctc_words") or cfg.speech_llm.aux_ctc_weight > 0


def uses_ctc_lm(cfg: Config) -> bool:
    return cfg.speech_llm.projector == "ctc_words" and cfg.speech_llm.ctc_words_lm and cfg.ctc.lm.weight > 0


def build_speech_llm(cfg: Config, ctc_model: torch.nn.Module, ctc_pieces: list[str], blank: int,
                     llm: torch.nn.Module, tok: Any, adapter_dir: Path | None = None,
                     ctc_dir: Path | None = None, token_ids: list[int] | None = None) -> SpeechLlm:
    """Encoder (and CTC head if used) from the CTC model, a fresh projector, LoRA (new, or
    loaded strictly from `adapter_dir`) or a frozen LLM. `ctc_dir` holds the tokenizer and the
    LM files when ctc_words reads LM-decoded words; `token_ids` are the LLM tokens a token_ctc
    projector emits (models/projector.llm_token_vocab of the train transcripts)."""
    scfg = cfg.speech_llm
    hidden = llm.get_input_embeddings().weight.shape[1]  # projection size from the LLM's config
    ctc: dict[str, Any] = {"blank": blank}
    if scfg.projector == "token_ctc":
        if not token_ids:
            raise UserError("speech_llm.projector=token_ctc needs the LLM token vocabulary of the train transcripts")
        ids = torch.tensor(token_ids, dtype=torch.long)
        table = llm.get_input_embeddings().weight.detach()
        if int(ids.max()) >= table.shape[0]:
            raise UserError(f"token_ctc vocabulary holds id {int(ids.max())} but the LLM has {table.shape[0]} tokens")
        ctc.update(token_ids=ids, table=table[ids].float(), token_ctc=scfg.token_ctc)
    if scfg.projector == "ctc_mix":
        ctc["pieces"] = piece_embeddings(ctc_pieces, blank, llm, tok)
        if scfg.ctc_mix_merge_space:  # a placeholder piece list (load_model_dir) is restored from trained.pt
            ctc["word_start"] = piece_embeddings(ctc_pieces, blank, llm, tok, prefix=" ")
            ctc["space"] = space_index(ctc_pieces)
            if ctc["space"] < 0 and set(ctc_pieces) != {"<blank>"}:
                raise UserError("speech_llm.ctc_mix_merge_space needs a CTC vocabulary with a '\u2581' piece "
                                "(ctc.tokenizer.model_type: char)")
    if scfg.projector == "ctc_words":
        ctc.update(piece_texts=ctc_pieces, llm_tokenizer=tok, embedding=llm.get_input_embeddings())
        if uses_ctc_lm(cfg):
            from llm_asr.decoding.ctc import LmCtcDecoder
            from llm_asr.models.tokenizer import CtcTokenizer

            if ctc_dir is None:
                raise UserError("speech_llm.ctc_words_lm needs the CTC model directory (its LM files)")
            ctc["lm_decoder"] = LmCtcDecoder(ctc_dir, CtcTokenizer(Path(ctc_dir) / "tokenizer.model"), cfg.ctc.lm)
    projector = build_projector(scfg.projector, ctc_model.encoder.output_dim, hidden, scfg.stride_ms,
                                ctc_model.encoder.frame_ms, **ctc)
    if scfg.llm.gradient_checkpointing:
        llm.gradient_checkpointing_enable()
        llm.config.use_cache = False
    llm = load_adapter(llm, adapter_dir, scfg.lora) if adapter_dir else apply_lora(llm, scfg.lora)

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids if text else []

    model = SpeechLlm(
        ctc_model.encoder, ctc_model.ctc_head if uses_ctc_head(cfg) else None, projector, llm,
        bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
        prompt_ids=ids(scfg.prompt), head_ids=ids(scfg.head), answer_ids=ids(scfg.answer_prefix),
    )
    if scfg.freeze_encoder:
        frozen = list(model.encoder.parameters()) + (list(model.ctc_head.parameters()) if model.ctc_head else [])
        for p in frozen:
            p.requires_grad_(False)
    return model


def trained_state(model: SpeechLlm, lora: bool = True) -> dict[str, torch.Tensor]:
    """Encoder, CTC head, projector (and LoRA) tensors: everything stage two changes."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k.startswith(_TRAINED_PREFIXES) or (lora and ".lora_" in k)}


def load_trained_state(model: SpeechLlm, state: dict[str, torch.Tensor], lora: bool = True) -> None:
    """Strict over the trained part: every trained key present, nothing unknown."""
    expected = set(trained_state(model, lora))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise RuntimeError(f"speech-LLM weights do not match: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys


def save_model_dir(model: SpeechLlm, cfg: Config, llm_ref: dict[str, str], ctc_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = trained_state(model, lora=False)
    atomic_save(state, out_dir / TRAINED)  # never a torn file for evaluate/serving to load
    if (out_dir / ADAPTER).exists():
        shutil.rmtree(out_dir / ADAPTER)
    save_adapter(model.llm, out_dir / ADAPTER)
    from llm_asr.decoding.ctc import LEXICON_FILE, LM_FILE
    from llm_asr.models.encoder import encoder_files

    lm_files = (LM_FILE, LEXICON_FILE) if uses_ctc_lm(cfg) else ()
    for name in ("cmvn.json", "tokenizer.model") + encoder_files(cfg.ctc.encoder) + lm_files:
        shutil.copyfile(ctc_dir / name, out_dir / name)
    meta = {
        "system": SYSTEM,
        "config": cfg.to_dict(),
        "llm_reference": llm_ref,
        "tokens": {"bos": model.bos_id, "eos": model.eos_id, "pad": model.pad_id, "prompt": model.prompt_ids,
                   "head": model.head_ids, "answer": model.answer_ids},
        "ctc_classes": None if model.ctc_head is None else model.ctc_head.num_classes,
    }
    (out_dir / "config.json").write_text(json.dumps(meta, indent=1) + "\n")


def is_speech_llm_dir(path: Path) -> bool:
    cfg = Path(path) / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("system") == SYSTEM


def load_model_dir(model_dir: Path) -> tuple[SpeechLlm, Any, Config]:
    """(model in eval mode, LLM tokenizer, config) rebuilt from the directory alone."""
    from llm_asr.models.encoder import CtcModel, build_encoder
    from llm_asr.models.llm import check_reference, load_llm

    model_dir = Path(model_dir)
    if not is_speech_llm_dir(model_dir) or not (model_dir / TRAINED).is_file():
        raise UserError(f"{model_dir} is not a speech-LLM model directory: run `llm-asr train-speech-llm`")
    meta = json.loads((model_dir / "config.json").read_text())
    cfg = Config.model_validate(meta["config"])
    llm, tok, ref = load_llm(cfg.speech_llm.llm)
    check_reference(meta["llm_reference"], ref)
    state = torch.load(model_dir / TRAINED, map_location="cpu", weights_only=True)
    classes = meta["ctc_classes"] or 2
    encoder = build_encoder(cfg.ctc.encoder, cfg.features.num_mel_bins, model_dir=model_dir)
    ctc = CtcModel(encoder, classes, cfg.ctc.encoder.ctc_upsample)
    if cfg.speech_llm.projector == "ctc_words":  # it writes the CTC pieces as text
        from llm_asr.models.tokenizer import CtcTokenizer

        pieces = CtcTokenizer(model_dir / "tokenizer.model").pieces
    else:  # ctc_mix's piece table is restored from trained.pt
        pieces = ["<blank>"] * classes
    token_ids = state["projector.token_ids"].tolist() if "projector.token_ids" in state else None
    model = build_speech_llm(cfg, ctc, pieces, 0, llm, tok, adapter_dir=model_dir / ADAPTER, ctc_dir=model_dir,
                             token_ids=token_ids)
    load_trained_state(model, state, lora=False)
    model.prompt_ids = list(meta["tokens"]["prompt"])
    model.head_ids = list(meta["tokens"].get("head", []))
    model.answer_ids = list(meta["tokens"].get("answer", []))
    return model.eval(), tok, cfg
