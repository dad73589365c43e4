"""Integration: prepare-data + extract-features on the micro profile (the `micro_workdir` fixture)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet
from lhotse.recipes.mls import prepare_mls

from llm_asr.config import LANGUAGES
from llm_asr.data.audio import load_audio
from llm_asr.data.manifests import load_cuts
from llm_asr.features import compute_fbank, load_cmvn

pytestmark = pytest.mark.integration


def test_corpus_is_mls_layout_for_all_languages(micro_workdir):
    _, paths = micro_workdir
    for lang in LANGUAGES:
        lang_dir = paths.corpus / f"mls_{lang}"
        assert (lang_dir / "metainfo.txt").is_file()
        for split in ("train", "dev", "test"):
            lines = (lang_dir / split / "transcripts.txt").read_text(encoding="utf-8").splitlines()
            assert 1 <= len(lines) <= 10
            for line in lines:
                uid, text = line.split("\t")
                spk, book, _ = uid.split("_")
                audio = lang_dir / split / "audio" / spk / book / f"{uid}.flac"
                info = sf.info(audio)
                assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
                assert text == text.lower() and not re.search(r"[\d.,;:!?\"()]", text)


def test_lhotse_mls_recipe_reads_the_corpus(micro_workdir):
    _, paths = micro_workdir
    manifests = prepare_mls(paths.corpus, opus=False)
    assert sorted(manifests) == sorted(LANGUAGES)
    ours = CutSet.from_file(paths.manifests / "cuts_test.jsonl.gz")
    theirs = {s.id for lang in manifests.values() for s in lang["test"]["supervisions"]}
    assert {c.id for c in ours} == theirs


def test_speakers_of_dev_test_are_disjoint_from_train(micro_workdir):
    _, paths = micro_workdir
    spk = {
        s: {c.supervisions[0].speaker for c in CutSet.from_file(paths.manifests / f"cuts_{s}.jsonl.gz")}
        for s in ("train", "dev", "test")
    }
    assert not spk["train"] & (spk["dev"] | spk["test"])


def test_sentences_are_disjoint_across_splits(micro_workdir):
    _, paths = micro_workdir
    texts = {
        s: {c.supervisions[0].text for c in CutSet.from_file(paths.manifests / f"cuts_{s}.jsonl.gz")}
        for s in ("train", "dev", "test")
    }
    assert (
        not texts["train"] & texts["dev"]
        and not texts["train"] & texts["test"]
        and not texts["dev"] & texts["test"]
    )


def test_cuts_carry_language_and_features_match_inference(micro_workdir):
    cfg, paths = micro_workdir
    cuts = load_cuts(paths.features / "cuts_train.jsonl.gz", paths.workdir)
    assert {c.supervisions[0].language for c in cuts} == set(LANGUAGES)
    cut = cuts[0]
    stored = cut.load_features()
    assert stored.shape == (cut.num_frames, 80)
    fresh = compute_fbank(load_audio(cut.recording.sources[0].source), cfg.features)
    np.testing.assert_array_equal(stored, fresh)


def test_cmvn_and_report(micro_workdir):
    cfg, paths = micro_workdir
    mean, std = load_cmvn(paths.features / "cmvn.json")
    assert mean.shape == std.shape == (80,) and (std > 0).all()
    report = json.loads((paths.reports / "data_report.json").read_text())
    assert report["num_skipped"] == 0 and report["skipped"] == []
    for lang in LANGUAGES:
        assert report["languages"][lang]["train"]["utterances"] == cfg.data.synthetic.train_per_language
        assert report["languages"][lang]["test"]["hours"] > 0


def test_manifests_are_relative_to_the_workdir_and_survive_a_move(micro_workdir, tmp_path):
    """A fresh clone + `dvc pull` (or a KFP artifact) puts the data at another path."""
    import shutil

    _, paths = micro_workdir
    for name in ("manifests/cuts_test.jsonl.gz", "features/cuts_test.jsonl.gz"):
        for c in CutSet.from_file(paths.workdir / "data" / name):
            assert c.recording.sources[0].source.startswith("data/corpus/mls_"), c.recording.sources[0].source
            assert not c.has_features or c.features.storage_path == "data/features/storage/test"
    moved = tmp_path / "elsewhere"
    shutil.copytree(paths.workdir / "data", moved / "data", ignore=shutil.ignore_patterns("storage"))
    shutil.copytree(paths.features / "storage" / "test", moved / "data/features/storage/test")
    cut = load_cuts(moved / "data/features/cuts_test.jsonl.gz", moved)[0]
    assert cut.recording.sources[0].source.startswith(str(moved))
    np.testing.assert_array_equal(cut.load_features(), load_cuts(paths.features / "cuts_test.jsonl.gz",
                                                                  paths.workdir)[0].load_features())
    assert cut.load_audio().shape[1] == cut.recording.num_samples
