"""llm_asr.data.audio: the lenient inference policy and the strict corpus policy."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from llm_asr.data.audio import BadAudio, load_audio, load_audio_bytes, read_corpus_audio
from llm_asr.errors import UserError
from tests.fixtures.data import tone


def _write(path, wave, sr, fmt="FLAC", subtype=None):
    sf.write(path, wave, sr, format=fmt, subtype=subtype)
    return path


def test_mono_16k_roundtrip(tmp_path):
    wave = load_audio(_write(tmp_path / "a.flac", tone(0.5), 16000))
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    np.testing.assert_allclose(wave, tone(0.5), atol=1e-4)


def test_stereo_is_downmixed_and_other_rates_resampled(tmp_path):
    stereo = np.stack([tone(1.0, sr=8000), np.zeros(8000, np.float32)], axis=1)
    wave = load_audio(_write(tmp_path / "s.wav", stereo, 8000, "WAV"))
    assert wave.shape == (16000,)  # 1 s at 16 kHz
    assert abs(np.abs(wave).max() - 0.05) < 0.01  # mean of the tone and silence


def test_bytes_match_files(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(0.3, sr=22050), 22050, format="WAV")
    wave = load_audio_bytes(buf.getvalue())
    assert wave.shape == (4800,)
    with pytest.raises(BadAudio, match="empty audio payload"):
        load_audio_bytes(b"")
    with pytest.raises(BadAudio, match="corrupt or not audio"):
        load_audio_bytes(b"RIFF....garbage")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf_are_rejected(tmp_path, value):
    wave = tone(0.2)
    wave[5] = value
    path = _write(tmp_path / "n.wav", wave, 16000, "WAV", "FLOAT")
    with pytest.raises(BadAudio, match="NaN or inf"):
        load_audio(path)


def test_empty_corrupt_truncated_missing(tmp_path):
    (tmp_path / "e.flac").write_bytes(b"")
    (tmp_path / "c.flac").write_bytes(b"not audio" * 50)
    good = _write(tmp_path / "t.flac", tone(2.0, freq=300), 16000).read_bytes()
    (tmp_path / "t.flac").write_bytes(good[: len(good) // 2])
    for name, match in (
        ("e.flac", "empty"),
        ("c.flac", "corrupt"),
        ("t.flac", "truncated"),
        ("x.flac", "no such"),
    ):
        with pytest.raises(BadAudio, match=match):
            load_audio(tmp_path / name)
    assert issubclass(BadAudio, UserError)


def test_corpus_policy_is_strict(tmp_path):
    assert read_corpus_audio(_write(tmp_path / "ok.flac", tone(0.1), 16000)).shape == (1600,)
    with pytest.raises(BadAudio, match="wrong sample rate 22050"):
        read_corpus_audio(_write(tmp_path / "r.flac", tone(0.1, sr=22050), 22050))
    with pytest.raises(BadAudio, match="2 channels"):
        read_corpus_audio(_write(tmp_path / "st.flac", tone(0.1, channels=2), 16000))
