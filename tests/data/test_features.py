"""llm_asr.features: the shared fbank function, the lhotse adapter and CMVN stats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_asr.config import FeaturesConfig
from llm_asr.errors import UserError
from llm_asr.features import FbankExtractor, RunningStats, compute_fbank, load_cmvn, save_cmvn
from tests.fixtures.data import tone


@pytest.mark.parametrize("samples", [1, 159, 160, 400, 16000, 16001, 48123])
def test_frames_follow_lhotse_convention(samples):
    from lhotse.utils import compute_num_frames

    feats = compute_fbank(
        np.random.default_rng(0).uniform(-0.5, 0.5, samples).astype(np.float32), FeaturesConfig()
    )
    assert feats.shape == (compute_num_frames(samples / 16000, 0.01, 16000), 80)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()


def test_deterministic_and_config_driven():
    wave = tone(1.0)
    a, b = compute_fbank(wave, FeaturesConfig()), compute_fbank(wave, FeaturesConfig())
    np.testing.assert_array_equal(a, b)
    assert compute_fbank(wave, FeaturesConfig(num_mel_bins=40, frame_shift_ms=20.0)).shape == (50, 40)


def test_lhotse_extractor_is_the_same_function():
    ext = FbankExtractor.from_features_config(FeaturesConfig())
    wave = tone(0.7)
    np.testing.assert_array_equal(ext.extract(wave[None, :], 16000), compute_fbank(wave, FeaturesConfig()))
    with pytest.raises(UserError, match="16000 Hz"):
        ext.extract(wave, 8000)


def test_running_stats_match_numpy_and_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    chunks = [rng.normal(3.0, 2.0, (n, 80)).astype(np.float32) for n in (10, 200, 33)]
    a, b = RunningStats(80), RunningStats(80)
    a.update(chunks[0])
    b.update(chunks[1])
    b.update(chunks[2])
    a.merge(b)
    mean, std = a.mean_std()
    allf = np.concatenate(chunks)
    np.testing.assert_allclose(mean, allf.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, allf.std(0), rtol=1e-4)
    save_cmvn(tmp_path / "cmvn.json", mean, std, a.n)
    m2, s2 = load_cmvn(tmp_path / "cmvn.json")
    np.testing.assert_allclose(s2, std, rtol=1e-6)
    np.testing.assert_allclose(m2, mean, rtol=1e-6)
    assert json.loads((tmp_path / "cmvn.json").read_text())["frames"] == 243


def test_cmvn_errors(tmp_path):
    with pytest.raises(UserError, match="extract-features"):
        load_cmvn(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"mean": [0.0, 1.0], "std": [1.0]}))
    with pytest.raises(UserError, match="malformed"):
        load_cmvn(tmp_path / "bad.json")
    with pytest.raises(UserError, match="train split empty"):
        RunningStats(80).mean_std()
