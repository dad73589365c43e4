"""A PyTorch Whisper encoder (transformers' `WhisperEncoder`) rebuilt from a CTranslate2 Whisper model
folder such as the packaged Whisper base (`llm_asr.decoding.whisper.packaged_model_dir`), loaded strictly.

    from llm_asr.pretrained.whisper_encoder import encode, packaged_whisper_encoder
    encoder, config = packaged_whisper_encoder()
    frames = encode(encoder, mel)  # (batch, 80, T<=3000) log-mel -> (batch, (T-1)//2+1, 512), 20 ms a frame

What the packaged Whisper base's model.bin holds (read from it): binary version 6, spec "WhisperSpec"
revision 3, 212 variables and one alias (decoder/projection/weight -> decoder/embeddings/weight); every
weight is float16 (no int8 weights, no `_scale` variables); 80 of the variables are the encoder's: conv1
(512, 80, 3), conv2 (512, 512, 3), position_encodings (1500, 512), 6 layers with a fused q/k/v
linear_0 (1536, 512), the final layer_norm and the int16 scalar encoder/num_heads = 8.
"""

from __future__ import annotations

import logging
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llm_asr.errors import UserError

log = logging.getLogger(__name__)

BINARY_VERSION = 6  # ctranslate2 4.8.5 model_spec.CURRENT_BINARY_VERSION; other versions are refused
SPEC_NAME = "WhisperSpec"
# Type ids in the file, in this order (model_spec._dtype_to_type_id; C++ DataType enum in types.h).
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_NUMPY = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4", "float16": "<f2", "bfloat16": "<u2"}
ENCODER = "encoder/"
CONFIG_VARIABLES = ("encoder/num_heads",)  # read by whisper_config_from_variables: a scalar, not a tensor


def _some(names, n: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


class _Reader:
    """Little-endian reads over the bytes of a model.bin (the writer packs native-order x86 values)."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, size: int) -> memoryview:
        if self.pos + size > len(self.data):
            raise UserError(f"{self.path} ends early (needs {self.pos + size} bytes, has {len(self.data)}): "
                            "the file is cut short; rebuild the model folder")
        view = memoryview(self.data)[self.pos:self.pos + size]
        self.pos += size
        return view

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (size,) = self.unpack("H")  # the length counts the trailing NUL the writer appends
        raw = bytes(self.take(size))
        if not raw.endswith(b"\0"):
            raise UserError(f"{self.path}: a name at byte {self.pos - size} is not NUL-terminated: not a "
                            "CTranslate2 model.bin")
        return raw[:-1].decode("utf-8")


def _array(reader: _Reader, name: str) -> np.ndarray:
    """One variable's record: rank (B), shape (rank x I), type id (B), byte count (I), raw values."""
    (rank,) = reader.unpack("B")
    shape = reader.unpack(f"{rank}I")
    (type_id,) = reader.unpack("B")
    (num_bytes,) = reader.unpack("I")
    if type_id >= len(_DTYPES):
        raise UserError(f"{reader.path}: {name} has unknown type id {type_id} (known: {', '.join(_DTYPES)})")
    dtype = np.dtype(_NUMPY[_DTYPES[type_id]])
    if num_bytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise UserError(f"{reader.path}: {name} {_DTYPES[type_id]} {shape} declares {num_bytes} bytes")
    values = np.frombuffer(reader.take(num_bytes), dtype=dtype).reshape(shape)
    if _DTYPES[type_id] == "bfloat16":  # no numpy bfloat16: its 16 bits are the top half of a float32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values


def read_ct2_model(path: str | Path) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """model.bin -> (spec name, {variable name: array}, {alias: variable it names}): the inverse of
    `ctranslate2.specs.model_spec.ModelSpec._serialize`. Arrays keep their stored dtype (float16 stays
    float16, int8 weights stay int8 beside their `_scale`), except bfloat16, returned as float32."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    (version,) = reader.unpack("I")
    if version != BINARY_VERSION:
        raise UserError(f"{path} is CTranslate2 binary version {version}; this reader knows version "
                        f"{BINARY_VERSION} only (ctranslate2 4.x): re-convert the model with ctranslate2 4.x")
    spec = reader.string()
    (_revision, count) = reader.unpack("II")
    variables = {}
    for _ in range(count):
        name = reader.string()
        variables[name] = _array(reader, name)
    (num_aliases,) = reader.unpack("I")
    aliases = {}
    for _ in range(num_aliases):
        alias = reader.string()
        aliases[alias] = reader.string()
    if reader.pos != len(reader.data):
        extra = len(reader.data) - reader.pos
        raise UserError(f"{path} has {extra} bytes after its last alias: not one CTranslate2 model")
    return spec, variables, aliases


def resolve_aliases(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> dict[str, np.ndarray]:
    """The variables with every alias (a variable the writer stored once for several names) filled in."""
    dangling = [f"{a} -> {t}" for a, t in aliases.items() if t not in variables]
    if dangling:
        raise UserError(f"model.bin aliases name variables it does not hold: {_some(dangling)}")
    return {**variables, **{alias: variables[target] for alias, target in aliases.items()}}


def dequantize(variables: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """CTranslate2's integer weights back to float32: `<name>` / `<name>_scale`. ModelSpec._quantize
    stores int8 as rint(w * 127 / amax) with one float32 scale 127 / amax per output row (conv weights
    are flattened to rows first), int16 as rint(w * 2**10 / amax) with one scalar scale; dividing undoes
    that up to its rounding (at most half a step, amax / 254 for int8). Returns (the variables with
    those weights dequantized and their scales removed, the scale names consumed)."""
    zeros = [n for n in variables if n.endswith("_zero")]
    if zeros:
        raise UserError(f"model.bin holds AWQ-quantized weights ({_some(zeros)}): convert the model with "
                        "ct2-transformers-converter --quantization float16 (or int8) instead")
    out, used = dict(variables), []
    for name in sorted(variables):
        target = name[: -len("_scale")]
        value = variables.get(target) if name.endswith("_scale") else None
        if value is None or value.dtype.kind not in "iu":
            continue  # not a weight scale: left for the strict mapping to use or name
        scale = variables[name].astype(np.float32)
        scale = scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))  # (out,) -> (out, 1, ..)
        out[target] = value.astype(np.float32) / scale
        del out[name]
        used.append(name)
    return out, used


def _direct_pairs(num_layers: int) -> list[tuple[str, str]]:
    """(HF WhisperEncoder key, CTranslate2 variable) for every tensor copied as it is: the converter
    (ctranslate2/converters/transformers.py WhisperLoader/BartLoader) sets conv weights, LayerNorm
    weight/bias as gamma/beta, fc1/fc2 as ffn linear_0/linear_1 and out_proj as self_attention linear_1."""
    pairs = [(f"{m}.{p}", f"encoder/{m}/{p}") for m in ("conv1", "conv2") for p in ("weight", "bias")]
    pairs += [("embed_positions.weight", "encoder/position_encodings/encodings"),
              ("layer_norm.weight", "encoder/layer_norm/gamma"),
              ("layer_norm.bias", "encoder/layer_norm/beta")]
    for i in range(num_layers):
        hf, ct = f"layers.{i}", f"encoder/layer_{i}"
        for hf_mod, ct_mod in (("self_attn.out_proj", "self_attention/linear_1"), ("fc1", "ffn/linear_0"),
                               ("fc2", "ffn/linear_1")):
            pairs += [(f"{hf}.{hf_mod}.{p}", f"{ct}/{ct_mod}/{p}") for p in ("weight", "bias")]
        for hf_mod, ct_mod in (("self_attn_layer_norm", "self_attention/layer_norm"),
                               ("final_layer_norm", "ffn/layer_norm")):
            pairs += [(f"{hf}.{hf_mod}.weight", f"{ct}/{ct_mod}/gamma"),
                      (f"{hf}.{hf_mod}.bias", f"{ct}/{ct_mod}/beta")]
    return pairs


def _tensor(name: str, value: np.ndarray) -> torch.Tensor:
    if value.dtype.kind != "f":
        raise UserError(f"model.bin's {name} is {value.dtype} without a {name}_scale to dequantize it: "
                        "re-convert the model (ct2-transformers-converter --quantization float16)")
    return torch.from_numpy(np.array(value, dtype=np.float32))  # a writable float32 copy


def _split_qkv(state: dict, i: int, take) -> None:
    """The converter fuses q, k, v into self_attention/linear_0 (weights concatenated on the output axis,
    in that order; utils.fuse_linear) and, k_proj having no bias, fills k's third of the bias with zeros."""
    hf, ct = f"layers.{i}.self_attn", f"encoder/layer_{i}/self_attention/linear_0"
    weight, bias = take(f"{ct}/weight"), take(f"{ct}/bias")
    if weight is None or bias is None:
        return
    if weight.shape[0] % 3 or bias.shape != (weight.shape[0],):
        raise UserError(f"model.bin's {ct} is {tuple(weight.shape)} with bias {tuple(bias.shape)}: not a "
                        "fused q/k/v projection (3 x d_model rows): not a Whisper converted by ctranslate2")
    q, k, v = weight.chunk(3)  # (3 d, d) -> 3 x (d, d)
    q_bias, k_bias, v_bias = bias.chunk(3)
    if k_bias.any():  # a no-op under softmax, but non-zero means the q/k/v order is not the one assumed
        raise UserError(f"model.bin's {ct}/bias has a non-zero key third: its q/k/v layout is not the one "
                        "ctranslate2's Whisper converter writes; re-convert the model")
    state.update({f"{hf}.q_proj.weight": q, f"{hf}.k_proj.weight": k, f"{hf}.v_proj.weight": v,
                  f"{hf}.q_proj.bias": q_bias, f"{hf}.v_proj.bias": v_bias})


def encoder_state_dict(variables: dict[str, np.ndarray], num_layers: int) -> dict[str, torch.Tensor]:
    """CTranslate2 variables (aliases resolved) -> a float32 state dict for transformers' WhisperEncoder.
    Strict: every `encoder/` variable is used exactly once (weights, their scales, the config scalars),
    none is missing; anything else raises UserError naming them. Variables outside `encoder/` (the
    decoder) are counted in the log and otherwise ignored."""
    enc, scales = dequantize({n: v for n, v in variables.items() if n.startswith(ENCODER)})
    used, missing, state = set(scales) | (set(CONFIG_VARIABLES) & set(enc)), [], {}

    def take(name: str) -> torch.Tensor | None:
        if name not in enc:
            missing.append(name)
            return None
        assert name not in used, f"{name} mapped twice"  # each variable feeds exactly one place
        used.add(name)
        return _tensor(name, enc[name])

    for hf, ct in _direct_pairs(num_layers):
        if (tensor := take(ct)) is not None:
            state[hf] = tensor
    for i in range(num_layers):
        _split_qkv(state, i, take)
    missing += [n for n in CONFIG_VARIABLES if n not in enc]
    unexpected = sorted(set(enc) - used)
    if missing or unexpected:
        raise UserError(f"model.bin's encoder does not match a {num_layers}-layer Whisper encoder: "
                        + "; ".join(f"{what}: {_some(names)}" for what, names in
                                    (("missing", missing), ("unexpected", unexpected)) if names)
                        + ". Convert the model with ctranslate2's ct2-transformers-converter (Whisper)")
    outside = Counter(n.split("/")[0] for n in variables if not n.startswith(ENCODER))
    log.info("CTranslate2 Whisper: %d encoder variables -> %d tensors; ignored %d variables outside "
             "encoder/ (%s)", len(enc) + len(scales), len(state), sum(outside.values()), dict(outside))
    return state


def _num_layers(variables: dict, scope: str) -> int:
    found = {int(m.group(1)) for n in variables if (m := re.match(rf"{scope}/layer_(\d+)/", n))}
    if found != set(range(len(found))):
        raise UserError(f"model.bin's {scope} layers are numbered {sorted(found)}, not 0..n-1: not one model")
    return len(found)


def _need(variables: dict, name: str) -> np.ndarray:
    if name not in variables:
        raise UserError(f"model.bin has no {name}: not a CTranslate2 Whisper model (spec {SPEC_NAME})")
    return variables[name]


def whisper_config_from_variables(variables: dict[str, np.ndarray]):
    """A transformers WhisperConfig read from the variables' shapes. The head count is not a shape:
    WhisperEncoderSpec stores it as the int16 scalar `encoder/num_heads` (config.json does not hold it).
    Decoder fields come from the decoder's variables where present; only the encoder is built here."""
    from transformers import WhisperConfig

    d_model, num_mel_bins = _need(variables, "encoder/conv1/weight").shape[:2]  # (d_model, n_mels, 3)
    heads = int(_need(variables, "encoder/num_heads"))
    if heads <= 0 or d_model % heads:
        raise UserError(f"model.bin's encoder/num_heads = {heads} does not divide d_model = {d_model}")
    fields = dict(d_model=int(d_model), num_mel_bins=int(num_mel_bins), encoder_attention_heads=heads,
                  encoder_layers=_num_layers(variables, "encoder"),
                  encoder_ffn_dim=int(_need(variables, "encoder/layer_0/ffn/linear_0/weight").shape[0]),
                  max_source_positions=int(_need(variables, "encoder/position_encodings/encodings").shape[0]))
    if "decoder/embeddings/weight" in variables:
        fields.update(vocab_size=int(variables["decoder/embeddings/weight"].shape[0]),
                      decoder_layers=_num_layers(variables, "decoder"),
                      decoder_attention_heads=int(variables.get("decoder/num_heads", heads)))
        for field, name in (("decoder_ffn_dim", "decoder/layer_0/ffn/linear_0/weight"),
                            ("max_target_positions", "decoder/position_encodings/encodings")):
            if name in variables:
                fields[field] = int(variables[name].shape[0])
    return WhisperConfig(**fields)


def _check_against(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every key of the module's state dict filled with its exact shape, and nothing else."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    source = dict(_direct_pairs(len(module.layers)))
    shaped = [f"{k} {tuple(state[k].shape)} (from {source.get(k, 'the fused q/k/v linear_0')}; "
              f"wants {want[k]})" for k in sorted(set(want) & set(state)) if tuple(state[k].shape) != want[k]]
    if missing or unexpected or shaped:
        raise UserError("model.bin's encoder does not fit the Whisper encoder its own shapes describe: "
                        + "; ".join(f"{what}: {_some(names, 3)}" for what, names in
                                    (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped))
                                    if names)
                        + ". The file is inconsistent: re-convert the model with ct2-transformers-converter")


def encoder_from_variables(variables: dict[str, np.ndarray]):
    """Variables (aliases resolved) -> (WhisperEncoder in eval mode, float32, strictly loaded; its config)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = whisper_config_from_variables(variables)
    encoder = WhisperEncoder(config)
    state = encoder_state_dict(variables, config.encoder_layers)
    _check_against(encoder, state)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval(), config


def load_whisper_encoder(folder: str | Path):
    """A CTranslate2 Whisper model folder (model.bin) -> (WhisperEncoder in eval mode, WhisperConfig)."""
    path = Path(folder) / "model.bin"
    if not path.is_file():
        raise UserError(f"{folder} has no model.bin: name a CTranslate2 (faster-whisper) Whisper folder")
    spec, variables, aliases = read_ct2_model(path)
    if spec != SPEC_NAME:
        raise UserError(f"{path} holds a CTranslate2 {spec}, not a {SPEC_NAME}: name a Whisper model folder")
    return encoder_from_variables(resolve_aliases(variables, aliases))


def packaged_whisper_encoder(cache: str | Path | None = None):
    """The packaged Whisper base's encoder; its folder is assembled once under `cache` (default: the repo's
    download cache, $LLM_ASR_CACHE or .cache, as `llm-asr evaluate --system whisper` uses)."""
    from llm_asr.pretrained.whisper_package import packaged_model_dir
    from llm_asr.paths import Paths

    return load_whisper_encoder(packaged_model_dir(Path(cache) if cache else Paths.at().cache))


def input_frames(encoder: nn.Module) -> int:
    """Mel frames (10 ms) of one full Whisper window: 3000 (30 s) for every released Whisper."""
    return encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]


def output_frames(encoder: nn.Module, num_mel_frames: int) -> int:
    """Encoder frames (20 ms) for `num_mel_frames` mel frames: the two convs' output length."""
    length = num_mel_frames
    for conv in (encoder.conv1, encoder.conv2):
        span = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
        length = (length + 2 * conv.padding[0] - span) // conv.stride[0] + 1
    return length


def encode(encoder: nn.Module, mel: torch.Tensor, pad_to_30s: bool = False,
           lens: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, num_mel_bins, T) log-mel, T <= 3000 -> (batch, output_frames(T), d_model), 20 ms a frame.

    HF's forward refuses any T but 3000: it adds the whole 1500-row position table. Two ways around it:
    pad_to_30s=True zero-pads the mel to 3000 frames, as faster-whisper does (faster_whisper.audio.
    pad_or_trim pads the log-mel with 0.0), runs HF's forward unchanged and keeps the frames covering the
    input: the 30 s context every Whisper training window had. pad_to_30s=False runs the encoder's own
    modules in HF's order on T frames, adding only the first output_frames(T) rows of the table: attention
    over T/2 frames instead of 1500, but a context Whisper never saw, so its frames differ from the padded
    run's. Dropout follows encoder.training; LayerDrop is not applied (Whisper's is 0).

    `lens` [batch]: the valid mel frames of each row of a batch padded to its longest row; each row then
    gets the frames it gets alone (up to float rounding), and its frames past output_frames(lens) are
    left for the caller to ignore. Its padding is zeroed before each conv (alone, a conv reads its own zero
    padding past the end); with pad_to_30s that zeroed tail is the row's own 30 s padding, without it a
    key-padding mask keeps every layer's attention inside the row (HF's encoder takes no attention mask:
    it always attends over the whole 30 s window)."""
    full, length = input_frames(encoder), mel.shape[-1]
    if mel.ndim != 3 or mel.shape[1] != encoder.config.num_mel_bins or not 0 < length <= full:
        raise UserError(f"the Whisper encoder takes (batch, {encoder.config.num_mel_bins}, T <= {full}) "
                        f"log-mel, got {tuple(mel.shape)}: cut longer audio into {full}-frame windows")
    frames = output_frames(encoder, length)
    valid = None if lens is None else torch.arange(length, device=mel.device)[None, :] < lens[:, None]  # [B, T]
    if valid is not None:
        mel = mel * valid[:, None, :].to(mel.dtype)  # [B, n_mels, T]: zeros past each row's end
    if pad_to_30s:
        padded = nn.functional.pad(mel, (0, full - length))  # (B, n_mels, T) -> (B, n_mels, 3000)
        return encoder(padded).last_hidden_state[:, :frames]  # (B, 1500, d) -> (B, frames, d)
    hidden = nn.functional.gelu(encoder.conv1(mel))  # (B, d, T)
    if valid is not None:
        hidden = hidden * valid[:, None, :].to(hidden.dtype)  # conv2 reads zeros past each row's end
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)  # (B, d, frames) -> (B, frames, d)
    hidden = hidden + encoder.embed_positions.weight[:frames]
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
    mask = None
    if lens is not None and bool((output_frames(encoder, lens) < frames).any()):
        keys = torch.arange(frames, device=mel.device)[None, :] < output_frames(encoder, lens)[:, None]  # [B, F]
        mask = torch.zeros(keys.shape, dtype=hidden.dtype, device=mel.device)  # additive: eager and SDPA
        mask = mask.masked_fill(~keys, torch.finfo(hidden.dtype).min)[:, None, None, :]  # [B, 1, 1, frames]
    for layer in encoder.layers:
        hidden = layer(hidden, mask)
    return encoder.layer_norm(hidden)
