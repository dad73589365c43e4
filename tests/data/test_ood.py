"""The out-of-domain test set: handbook sentence cleaning, selection (no LibreOffice overlap), test-pool
voices only, MLS layout, byte-identical reruns (stages/prepare_ood.py, data/text.py handbook_*)."""

from __future__ import annotations

import hashlib
import json

import pytest

from llm_asr.config import load_config
from llm_asr.data import text
from llm_asr.data.mls import read_mls_dir
from llm_asr.data.synthetic import make_voices, split_variants
from llm_asr.errors import UserError
from llm_asr.paths import Paths

PAGE = """<html><body>
<p class="title">Chapitre 6. Maintenance</p>
<div class="para">
  Die Paketverwaltung ist das <span class="emphasis">Herz</span> des Systems.
  <code class="command">apt</code> zeigt alle Pakete an. Jede Aktualisierung wird vorher geprüft.
</div>
<div class="para">Das Paket <span class="pkg pkg">samba</span> stellt Dateien im Netz bereit.</div>
<div class="para">Siehe die Datei <code class="filename">/etc/apt/sources.list</code> für Details.</div>
<div class="para">The administrator reads the documentation before every upgrade.</div>
<div class="para">Ein Server <div class="para">mit verschachteltem Absatz</div> bleibt ein Absatz.</div>
</body></html>"""

# what the two languages' LibreOffice corpus holds (the overlap check's reference) ...
LIBREOFFICE = {
    "german": ["Wählen Sie die Zellen aus, die Sie formatieren möchten.", "Öffnen Sie das Dokument."],
    "polish": ["Kliknij przycisk, aby zapisać zmiany w dokumencie."],
}
# ... and the handbook sentences offered: one repeats a LibreOffice sentence up to case and punctuation
HANDBOOK = {
    "german": [
        "Die Paketverwaltung ist das Herz des Systems.",
        "Jede Aktualisierung wird vorher sorgfältig geprüft.",
        "Öffnen Sie das  Dokument!",  # normalizes to a LibreOffice sentence: dropped
        "Ein Dienst startet beim Hochfahren des Rechners automatisch.",
        "Zu kurz.",  # below data.synthetic.min_words
    ],
    "polish": [
        "Administrator systemu regularnie sprawdza dzienniki wszystkich usług.",
        "Każdy pakiet zawiera opis swoich zależności od innych pakietów.",
        "Serwer pocztowy przyjmuje wiadomości od wszystkich użytkowników sieci.",
    ],
}


def _micro(*sets: str):
    return load_config("micro", ["data.languages=[german,polish]", *sets])


def test_handbook_paragraphs_mark_markup_and_skip_titles():
    paras = text.handbook_paragraphs(PAGE)
    assert len(paras) == 5 and not any(p.startswith("Chapitre") for p in paras)  # <p class="title">: no prose
    assert paras[0].startswith("Die Paketverwaltung ist das Herz des Systems.")  # emphasis keeps its words
    assert paras[4] == "Ein Server mit verschachteltem Absatz bleibt ein Absatz."
    assert text.html_paragraphs(PAGE) == ["Chapitre 6. Maintenance"]  # the LibreOffice parser is unchanged


def test_handbook_sentences_are_cleaned_as_the_corpus():
    sents = text.clean_sentences(text.handbook_paragraphs(PAGE), "german")
    # sentences with a command, package or file name go (alone: a command opening one does not take its
    # neighbour along); the English sentence fails the language check
    assert sents == [
        "Die Paketverwaltung ist das Herz des Systems.",
        "Jede Aktualisierung wird vorher geprüft.",
        "Ein Server mit verschachteltem Absatz bleibt ein Absatz.",
    ]
    assert "\x00" not in "".join(sents)


def test_drop_known_compares_normalized_text():
    known = {text.normalize_transcript(s) for s in LIBREOFFICE["german"]}
    kept, dropped = text.drop_known(HANDBOOK["german"], known)
    assert dropped == ["Öffnen Sie das  Dokument!"] and len(kept) == len(HANDBOOK["german"]) - 1


def test_select_sentences_excludes_libreoffice_and_short_ones():
    from llm_asr.stages.prepare_ood import select_sentences

    cfg = _micro("data.ood.per_language=3")
    known = {text.normalize_transcript(s) for v in LIBREOFFICE.values() for s in v}
    chosen, facts = select_sentences(cfg, "german", HANDBOOK["german"], known)
    assert len(chosen) == 3 and not {text.normalize_transcript(s) for s in chosen} & known
    assert "Zu kurz." not in chosen
    assert facts["counts"] == {"clean": 5, "in_word_range": 4, "overlap_libreoffice": 1, "usable": 3}
    assert [s["reason"] for s in facts["skipped"]] == ["also a LibreOffice sentence"]
    assert select_sentences(cfg, "german", HANDBOOK["german"], known)[0] == chosen  # seeded
    with pytest.raises(UserError, match="data.ood.per_language"):
        select_sentences(_micro("data.ood.per_language=4"), "german", HANDBOOK["german"], known)


@pytest.fixture
def fixture_text(monkeypatch, tmp_path):
    """The stage reads the fixture sentences above instead of the Debian packages."""
    monkeypatch.setenv("LLM_ASR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(text, "sentences_for_all", lambda langs, *_: {k: LIBREOFFICE[k] for k in langs})
    monkeypatch.setattr(text, "handbook_sentences_for_all", lambda langs, *_: {k: HANDBOOK[k] for k in langs})
    monkeypatch.setattr(text, "handbook_package", lambda cache: "debian-handbook_test_all.deb")


def _files(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_stage_writes_mls_layout_with_test_voices_only(fixture_text, tmp_path):
    from llm_asr.stages import prepare_ood

    cfg, paths = _micro(), Paths.at(tmp_path / "w1")
    report = prepare_ood.run(cfg, paths)
    items, skipped = read_mls_dir(paths.ood, "test", cfg.data.languages)
    assert not skipped and len(items) == 4 and report["total"]["utterances"] == 4
    assert sorted(p.name for p in paths.ood.iterdir()) == ["mls_german", "mls_polish"]
    assert sorted(p.name for p in (paths.ood / "mls_german").iterdir()) == ["metainfo.txt", "test"]
    known = {text.normalize_transcript(s) for v in LIBREOFFICE.values() for s in v}
    assert not {it.text for it in items} & known
    syn = cfg.data.synthetic
    pools = split_variants(cfg.seed, syn.eval_speakers)
    assert set(report["variants"]) <= {v for v, _ in pools["test"]}
    for lang in cfg.data.languages:  # exactly the corpus's test voices: same speakers, rates and pitches
        test_voices = make_voices(lang, syn.train_speakers, syn.eval_speakers, cfg.seed)["test"]
        assert report["voices"][lang] == [f"{v.speaker}: {v.describe()}" for v in test_voices]
        assert {it.speaker for it in items if it.language == lang} <= {v.speaker for v in test_voices}
    meta = (paths.ood / "mls_german" / "metainfo.txt").read_text(encoding="utf-8")
    assert "Debian Administrator's Handbook" in meta and "| test " in meta
    saved = json.loads((paths.reports / "ood_report.json").read_text(encoding="utf-8"))
    assert saved["num_skipped"] == 1 and saved["skipped"][0]["language"] == "german"


def test_stage_rerun_is_byte_identical(fixture_text, tmp_path):
    from llm_asr.stages import prepare_ood

    cfg = _micro()
    first, second = Paths.at(tmp_path / "a"), Paths.at(tmp_path / "b")
    prepare_ood.run(cfg, first)
    prepare_ood.run(cfg, second)
    assert _files(first.ood) == _files(second.ood) and len(_files(first.ood)) == 2 * (2 + 2)
    prepare_ood.run(_micro("seed=7"), second)
    assert _files(first.ood) != _files(second.ood)


@pytest.mark.integration
def test_real_handbook_on_micro_for_two_languages(tmp_path):
    """The real source (`debian-handbook` via apt, cached): no LibreOffice overlap, identical rerun."""
    from llm_asr.stages import prepare_ood

    cfg = _micro()
    first, second = Paths.at(tmp_path / "a"), Paths.at(tmp_path / "b")
    report = prepare_ood.run(cfg, first)
    prepare_ood.run(cfg, second)
    assert _files(first.ood) == _files(second.ood)
    assert report["text_package"].startswith("debian-handbook_") and report["total"]["utterances"] == 4
    assert all(c["usable"] >= 200 for c in report["sentences"].values())
    lo = text.sentences_for_all(cfg.data.languages, first.cache, 1)
    known = {text.normalize_transcript(s) for v in lo.values() for s in v}
    items, _ = read_mls_dir(first.ood, "test", cfg.data.languages)
    assert not {it.text for it in items} & known
