"""What the pyfunc accepts: audio bytes (and paths only when not served), within the configured limits."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from mlflow.exceptions import MlflowException

from llm_asr.config import load_config
from llm_asr.serving import SERVING_ENV, _is_served, decode_inputs


def _clip(seconds: float, sr: int = 16000, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format=fmt)
    return buf.getvalue()


LIMITS = load_config(
    "micro", ["tracking.max_clips=3", "tracking.max_audio_s=2", "tracking.max_payload_mb=0.1"]
).tracking


def _rejects(frame: pd.DataFrame, match: str, allow_paths: bool = False) -> None:
    with pytest.raises(MlflowException, match=match) as err:
        decode_inputs(frame, LIMITS, allow_paths=allow_paths)
    assert err.value.get_http_status_code() == 400


def test_wav_and_flac_bytes_at_any_rate_decode_to_16k_mono():
    waves = decode_inputs(pd.DataFrame({"audio": [_clip(1.0), _clip(0.5, 22050, "FLAC")]}), LIMITS, False)
    assert [w.dtype for w in waves] == [np.float32, np.float32]
    assert [len(w) for w in waves] == [16000, 8000]


def test_paths_only_when_not_served(tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(_clip(1.0))
    frame = pd.DataFrame({"path": [str(wav)]})
    assert len(decode_inputs(frame, LIMITS, allow_paths=True)[0]) == 16000
    _rejects(frame, "file paths are not accepted")
    _rejects(pd.DataFrame({"path": ["/etc/passwd"]}), "file paths are not accepted")


@pytest.mark.parametrize(
    "frame, match",
    [
        (pd.DataFrame({"audio": []}), "empty request"),
        (pd.DataFrame({"audio": [_clip(0.2)] * 4}), "4 clips in one request; the limit is 3"),
        (pd.DataFrame({"audio": [_clip(1.9), _clip(1.9)]}), "the limit is 0.1 MB"),
        (pd.DataFrame({"audio": [_clip(2.5, 8000)]}), r"row 0: 2 s of audio; the limit is 2.0 s"),
        (pd.DataFrame({"audio": [b"RIFF\x00\x00not a wav"]}), "row 0: corrupt or not audio"),
        (pd.DataFrame({"audio": [_clip(1.0, fmt="FLAC")[:2000]]}), "row 0: (corrupt|truncated|damaged)"),
        (pd.DataFrame({"audio": [None]}), "row 0: no audio"),
    ],
)
def test_bad_requests_are_400_with_a_message(frame, match):
    _rejects(frame, match)


def test_served_mode_follows_mlflows_environment_flag(monkeypatch):
    monkeypatch.delenv(SERVING_ENV, raising=False)
    assert not _is_served()
    monkeypatch.setenv(SERVING_ENV, "true")
    assert _is_served()
