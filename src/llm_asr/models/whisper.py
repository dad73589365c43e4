"""A pretrained Whisper encoder as the encoder of both stages (ctc.encoder.source=whisper).

`WhisperEncoderAdapter` has the ConformerEncoder interface: `encoder(feats [B,T,80], lens [B]) ->
(out [B,T',D], out_lens [B])` over Whisper's own log-mel (features.kind=whisper), T' = (T - 1) // 2 + 1
frames of 20 ms, D = d_model (512 for Whisper base), plus `.output_dim`, `.frame_ms` and `output_lengths`.
Each utterance is encoded as it would be alone (pretrained/whisper_encoder.encode with `lens`: padding
zeroed before the convs, a key-padding mask in every layer); without ctc.encoder.whisper.pad_to_30s the
encoder reads only the utterance's own frames, and an utterance longer than Whisper's 30 s window is an
error, never silently cut. Frozen (the default), its parameters never train and it stays in eval mode;
`train_top_layers` lets the top layers and the final LayerNorm train.

A model directory holds the encoder's weights in its state dict and its shape in `whisper_encoder.json`
(the transformers WhisperConfig), so loading one never needs the pretrained weights again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from llm_asr.config import AugmentConfig, WhisperEncoderConfig
from llm_asr.errors import UserError
from llm_asr.models.encoder import SpecAugment
from llm_asr.pretrained.whisper_encoder import encode, input_frames, output_frames

ARCHITECTURE = "whisper_encoder.json"
MEL_FRAME_MS = 10  # features.kind=whisper: one log-mel frame per 10 ms (config-checked)


class WhisperEncoderAdapter(nn.Module):
    def __init__(self, whisper: nn.Module, wcfg: WhisperEncoderConfig, augment: AugmentConfig | None = None):
        super().__init__()
        self.specaugment = SpecAugment(augment) if augment is not None and augment.specaugment else None
        self.whisper = whisper.float()
        self.pad_to_30s = wcfg.pad_to_30s
        self.output_dim = whisper.config.d_model
        self.frame_ms = MEL_FRAME_MS * whisper.conv1.stride[0] * whisper.conv2.stride[0]  # 20
        self.max_frames = input_frames(whisper)  # 3000 mel frames: 30 s
        self._trainable = self._trainable_modules(wcfg)
        for p in whisper.parameters():
            p.requires_grad_(False)
        for module in self._trainable:
            for name, p in module.named_parameters():
                # HF keeps Whisper's sinusoidal position table fixed (WhisperEncoder.__init__); so do we
                p.requires_grad_(module is not whisper or not name.startswith("embed_positions."))
        self.train()

    def _trainable_modules(self, wcfg: WhisperEncoderConfig) -> tuple[nn.Module, ...]:
        if not wcfg.freeze:
            return (self.whisper,)
        layers, top = self.whisper.layers, wcfg.train_top_layers
        if top > len(layers):
            raise UserError(f"ctc.encoder.whisper.train_top_layers={top}, but this Whisper encoder has "
                            f"{len(layers)} layers: set at most {len(layers)}")
        return (*layers[len(layers) - top:], self.whisper.layer_norm) if top else ()

    def train(self, mode: bool = True) -> WhisperEncoderAdapter:
        """Frozen parts stay in eval mode (no dropout) whatever the trainer asks."""
        super().train(mode)
        self.whisper.eval()
        for module in self._trainable:
            module.train(mode)
        return self

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return output_frames(self.whisper, lens)  # (T - 1) // 2 + 1: conv1 keeps T, conv2 halves it

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if feats.shape[1] > self.max_frames:
            limit, got = self.max_frames * MEL_FRAME_MS / 1000, feats.shape[1] * MEL_FRAME_MS / 1000
            raise UserError(f"an utterance of {got:.2f} s is longer than the Whisper encoder's {limit:g} s "
                            f"window: keep training utterances to {limit:g} s (data.max_utterance_s) and cut "
                            f"long audio at inference (decoding.segment_s <= {limit:g})")
        if self.specaugment is not None:
            feats = self.specaugment(feats)
        enc = encode(self.whisper, feats.transpose(1, 2), self.pad_to_30s, lens)  # [B, 80, T] -> [B, T', D]
        out_lens = self.output_lengths(lens)
        valid = torch.arange(enc.shape[1], device=enc.device)[None, :] < out_lens[:, None]  # [B, T']
        return enc * valid[..., None].to(enc.dtype), out_lens

    def save_architecture(self, folder: Path) -> None:
        (Path(folder) / ARCHITECTURE).write_text(json.dumps(self.whisper.config.to_dict(), indent=1,
                                                            sort_keys=True) + "\n")


def read_architecture(folder: Path) -> dict:
    path = Path(folder) / ARCHITECTURE
    if not path.is_file():
        raise UserError(f"{folder} has no {ARCHITECTURE} (the shape of its Whisper encoder): it is not a "
                        "complete model directory; run `llm-asr train-ctc` again")
    return json.loads(path.read_text())


def random_whisper_config(wcfg: WhisperEncoderConfig, num_mel_bins: int):
    """A tiny WhisperConfig (ctc.encoder.whisper.model=random, for tests) with Whisper's 30 s window."""
    from transformers import WhisperConfig

    return WhisperConfig(d_model=wcfg.random_d_model, encoder_layers=wcfg.random_layers,
                         encoder_attention_heads=wcfg.random_heads, encoder_ffn_dim=wcfg.random_ffn_dim,
                         num_mel_bins=num_mel_bins, decoder_layers=1, decoder_attention_heads=wcfg.random_heads,
                         decoder_ffn_dim=wcfg.random_ffn_dim)


def _transformers_encoder(name: str) -> nn.Module:
    """The encoder of a transformers Whisper checkpoint (a local folder, or a Hub id, downloaded only
    because a user named it), loaded with every encoder weight present."""
    from transformers import WhisperModel

    try:
        model, info = WhisperModel.from_pretrained(name, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"ctc.encoder.whisper.model={name!r} is neither a CTranslate2 folder (no model.bin) nor "
                        f"a transformers Whisper model ({str(e).splitlines()[0][:160]}): name such a folder, a "
                        "Hugging Face id while online, or \"\" for the packaged Whisper base") from None
    missing = [k for k in info["missing_keys"] if k.startswith("encoder.")]
    if missing:
        raise UserError(f"{name} lacks encoder weights ({', '.join(missing[:3])}): not a complete Whisper model")
    return model.encoder.eval()


def pretrained_whisper(wcfg: WhisperEncoderConfig, num_mel_bins: int) -> nn.Module:
    """transformers' WhisperEncoder with the weights ctc.encoder.whisper.model names."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from llm_asr.pretrained.whisper_encoder import load_whisper_encoder, packaged_whisper_encoder

    if wcfg.model == "random":
        encoder = WhisperEncoder(random_whisper_config(wcfg, num_mel_bins))
    elif wcfg.model == "":
        encoder, _ = packaged_whisper_encoder()
    elif (Path(wcfg.model) / "model.bin").is_file():
        encoder, _ = load_whisper_encoder(wcfg.model)
    else:
        encoder = _transformers_encoder(wcfg.model)
    if encoder.config.num_mel_bins != num_mel_bins:
        raise UserError(f"the Whisper encoder {wcfg.model or '(packaged Whisper base)'} reads "
                        f"{encoder.config.num_mel_bins} mel bins and features.num_mel_bins is {num_mel_bins}: "
                        f"set features.num_mel_bins={encoder.config.num_mel_bins}")
    return encoder


def build_whisper_encoder(wcfg: WhisperEncoderConfig, num_mel_bins: int, augment: AugmentConfig | None = None,
                          model_dir: Path | None = None) -> WhisperEncoderAdapter:
    """The adapter over the pretrained encoder; with `model_dir`, over an encoder of the shape saved there
    (random weights, for the caller's strict load of the directory's state dict)."""
    if model_dir is None:
        return WhisperEncoderAdapter(pretrained_whisper(wcfg, num_mel_bins), wcfg, augment)
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoderAdapter(WhisperEncoder(WhisperConfig.from_dict(read_architecture(model_dir))), wcfg,
                                 augment)
