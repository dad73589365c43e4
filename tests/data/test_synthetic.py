"""llm_asr.data.synthetic: the utterance plan (splits, voices, ids) and byte-identical synthesis."""

from __future__ import annotations

import pytest

from llm_asr.config import load_config
from llm_asr.data.synthetic import (LM_TEXT, VARIANTS, build_synthetic_corpus, lm_text_lines, make_voices,
                                    plan_language, speak, voices_report)
from llm_asr.errors import UserError
from llm_asr.paths import Paths

SENTENCES = [f"Satz Nummer {w} steht hier ganz allein." for w in map(chr, range(ord("a"), ord("z") + 1))] + [
    f"Noch ein Satz mit dem Wort {w} darin." for w in ("Haus", "Baum", "Tisch", "Stuhl", "Fenster", "Tür")
]


def test_plan_splits_are_disjoint_and_ids_unique():
    cfg = load_config("micro")
    plan = plan_language(cfg, "german", SENTENCES)
    by_split = {s: [u for u in plan if u.split == s] for s in ("train", "dev", "test")}
    assert [len(by_split[s]) for s in ("train", "dev", "test")] == [8, 3, 3]
    texts = {s: {u.transcript for u in us} for s, us in by_split.items()}
    assert not (
        texts["train"] & texts["dev"] or texts["train"] & texts["test"] or texts["dev"] & texts["test"]
    )
    assert len({u.id for u in plan}) == len(plan)
    train_spk = {u.voice.speaker for u in by_split["train"]}
    eval_spk = {u.voice.speaker for u in by_split["dev"] + by_split["test"]}
    assert not train_spk & eval_spk and len(train_spk) == 3
    assert all(u.id.startswith("2") and u.transcript == u.transcript.lower() for u in plan)


def test_lm_text_holds_every_other_sentence_and_no_spoken_one():
    cfg = load_config("micro")
    plan = plan_language(cfg, "german", SENTENCES)
    lines = lm_text_lines(SENTENCES + ["Ein Satz.", "  "], plan)
    assert not set(lines) & {u.transcript for u in plan}  # nothing any split speaks (dev/test above all)
    assert len(lines) == len(SENTENCES) - len(plan) + 1 and lines == sorted(set(lines))
    assert "ein satz" in lines and all(line == line.lower() and "." not in line for line in lines)


def test_voices_are_disjoint_and_seeded():
    v = make_voices("polish", 12, 4, seed=1)
    sets = {split: {x.variant for x in v[split]} for split in ("train", "dev", "test")}
    assert not sets["train"] & sets["dev"] and not sets["train"] & sets["test"] and not sets["dev"] & sets["test"]
    assert v == make_voices("polish", 12, 4, seed=1) and v != make_voices("polish", 12, 4, seed=2)
    with pytest.raises(UserError, match="espeak-ng variants"):
        make_voices("polish", len(VARIANTS), 1, seed=1)


def test_test_voices_are_unseen_in_every_language():
    """A variant heard in German training is not an unseen voice for the French test."""
    cfg = load_config("default")
    syn = cfg.data.synthetic
    voices = [make_voices(lang, syn.train_speakers, syn.eval_speakers, cfg.seed) for lang in cfg.data.languages]
    used = {split: {x.variant for v in voices for x in v[split]} for split in ("train", "dev", "test")}
    assert not used["test"] & (used["train"] | used["dev"]) and not used["dev"] & used["train"]
    assert len(used["test"]) >= syn.eval_speakers and {x.gender for v in voices for x in v["test"]} == {"F", "M"}
    plan = [u for lang in ("german", "french") for u in plan_language(cfg, lang, SENTENCES * 60)]
    report = voices_report(plan)
    assert list(report) == ["train", "dev", "test"] and all(r == sorted(r) for r in report.values())
    assert not set(report["test"]) & (set(report["train"]) | set(report["dev"]))
    assert not set(report["dev"]) & set(report["train"])


def test_every_variant_is_an_espeak_voice_file():
    """espeak-ng falls back to its default voice for an unknown variant name: every name must exist."""
    data = pytest.importorskip("pathlib").Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data/voices/!v")
    if not data.is_dir():
        pytest.skip("espeak-ng-data not installed here")
    assert [v for v, _ in VARIANTS if not (data / v).is_file()] == []
    assert len({v for v, _ in VARIANTS}) == len(VARIANTS)


def test_too_few_sentences_is_a_clear_error():
    cfg = load_config("micro", ["data.synthetic.train_per_language=100"])
    with pytest.raises(UserError, match="usable sentences"):
        plan_language(cfg, "german", SENTENCES)


def test_speak_gives_16k_audio():
    cfg = load_config("micro")
    voice = make_voices("english", 1, 1, cfg.seed)["train"][0]
    wave = speak("Click the button to save the document.", voice)
    assert wave.dtype.name == "float32" and 16000 < len(wave) < 16000 * 6 and 0.05 < abs(wave).max() <= 1.0


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_corpus(tmp_path):
    cache = Paths.at(tmp_path).cache
    cfg = load_config("micro", ["data.languages=[german, polish]"])
    build_synthetic_corpus(cfg, tmp_path / "a", cache)
    build_synthetic_corpus(cfg, tmp_path / "b", cache)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(a) == 2 * (2 + 3 + 14) and a == b  # metainfo + lm_text, 3 transcripts, 14 flac
    assert all(b"\t" not in a[p] for p in a if p.name == LM_TEXT)
    other = load_config("micro", ["data.languages=[german, polish]", "seed=7"])
    build_synthetic_corpus(other, tmp_path / "c", cache)
    assert _tree(tmp_path / "c") != a
