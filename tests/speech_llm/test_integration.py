"""Micro end to end: train-speech-llm (LoRA and frozen), evaluate --system speech-llm, transcribe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from llm_asr.cli import app

pytestmark = pytest.mark.integration


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def _evaluate(workdir: Path) -> dict:
    out = workdir / "reports" / "speech_llm" / "metrics.json"
    _cli("evaluate", "--profile", "micro", "--workdir", str(workdir), "--system", "speech-llm",
         "--model", str(workdir / "models" / "speech_llm"), "--out", str(out))
    metrics = json.loads(out.read_text())
    assert metrics["system"] == "speech-llm" and metrics["languages"]
    assert all(m["utterances"] > 0 for m in metrics["languages"].values())
    return metrics


def test_lora_variant_trains_evaluates_and_transcribes(micro_speech_llm, tmp_path) -> None:
    cfg, paths = micro_speech_llm
    model_dir = paths.speech_llm_model
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["llm_reference"]["weights_sha256"] and (model_dir / "adapter" / "adapter_model.safetensors").exists()
    assert sum(f.stat().st_size for f in model_dir.glob("*.pt")) < 5e6  # no copy of the LLM
    _evaluate(paths.workdir)
    # transcribe: one corpus file and a 10-minute file (long-form windows + stitching)
    short = next(paths.corpus.rglob("*.flac"))
    long_wave = np.tile(sf.read(short)[0].astype(np.float32), 1 + int(600 * 16000 / len(sf.read(short)[0])))
    long_file = tmp_path / "ten_minutes.wav"
    sf.write(long_file, long_wave[: 600 * 16000], 16000)
    out = _cli("transcribe", str(short), str(long_file), "--profile", "micro", "--workdir", str(paths.workdir),
               "--model", str(model_dir), "--set", "decoding.tokens_per_second=1")  # short outputs: a quick test
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["audio"] for line in lines] == [str(short), str(long_file)]
    assert all(isinstance(line["text"], str) for line in lines)


def test_joint_ctc_decoding_evaluates_and_says_so(micro_speech_llm, tmp_path) -> None:
    """The default profile's decoding (beam + token-CTC prefix scores) through the real evaluate stage."""
    cfg, paths = micro_speech_llm
    assert cfg.speech_llm.projector == "token_ctc"
    out = tmp_path / "joint.json"
    _cli("evaluate", "--profile", "micro", "--workdir", str(paths.workdir), "--system", "speech-llm",
         "--model", str(paths.speech_llm_model), "--out", str(out), "--set", "decoding.ctc_weight=0.5",
         "--set", "decoding.beam_size=2", "--set", "decoding.tokens_per_second=2")
    metrics = json.loads(out.read_text())
    assert metrics["decoding"] == "beam search 2 + token CTC prefix score (weight 0.5)"
    assert all(m["utterances"] > 0 for m in metrics["languages"].values())


def _variant_workdir(paths, work: Path) -> Path:
    """A workdir sharing the micro fixture's data and CTC model, for another stage-two variant."""
    (work / "models").mkdir(parents=True)
    os.symlink(paths.workdir / "data", work / "data")
    os.symlink(paths.ctc_model, work / "models" / "ctc")
    return work


def test_frozen_variant(micro_ctc, tmp_path) -> None:
    cfg, paths, _ = micro_ctc
    work = _variant_workdir(paths, tmp_path / "frozen")
    _cli("train-speech-llm", "--profile", "micro", "--workdir", str(work), "--set", "speech_llm.lora.rank=0",
         "--set", "speech_llm.projector=ctc_mix", "--set", "speech_llm.aux_ctc_weight=0.3")
    model_dir = work / "models" / "speech_llm"
    assert not (model_dir / "adapter").exists()  # nothing of the LLM was trained
    summary = json.loads((model_dir / "train_summary.json").read_text())
    assert summary["lora_params_m"] == 0 and summary["steps"] == cfg.speech_llm.train.max_steps
    _evaluate(work)


def test_ctc_words_variant(micro_ctc, tmp_path) -> None:
    """The default profile's recipe on micro: the CTC baseline's LM-decoded words as LLM tokens,
    frozen encoder, LoRA; the model directory carries the LM it reads them with."""
    cfg, paths, _ = micro_ctc
    work = _variant_workdir(paths, tmp_path / "words")
    _cli("train-speech-llm", "--profile", "micro", "--workdir", str(work), "--set", "speech_llm.projector=ctc_words",
         "--set", "speech_llm.freeze_encoder=true", "--set", "speech_llm.ctc_words_lm=true")
    model_dir = work / "models" / "speech_llm"
    for name in ("lm.arpa", "lexicon.txt"):
        assert (model_dir / name).read_bytes() == (paths.ctc_model / name).read_bytes()
    summary = json.loads((model_dir / "train_summary.json").read_text())
    assert summary["steps"] == cfg.speech_llm.train.max_steps and summary["lora_params_m"] > 0
    trained = torch.load(model_dir / "trained.pt", weights_only=True)
    ctc_state = torch.load(paths.ctc_model / "model.pt", weights_only=True)
    for key in ("encoder.subsampling.conv1.weight", "ctc_head.weight"):  # frozen: exactly stage one's
        torch.testing.assert_close(trained[key], ctc_state[key], rtol=0, atol=0)
    assert not any(k.startswith("projector._embedding") for k in trained)  # never a copy of the LLM table
    _evaluate(work)
