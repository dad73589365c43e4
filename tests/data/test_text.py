"""llm_asr.data.text: HTML paragraphs, sentence cleaning and MLS normalization."""

from __future__ import annotations

import pytest

from llm_asr.data.text import html_paragraphs, is_clean_sentence, normalize_transcript, split_sentences


def test_paragraphs_include_inline_markup_and_skip_other_elements():
    page = '<h1>Titel</h1><p id="par_1" class="paragraph">Klicken Sie auf <span class="emph">OK</span>.</p><div>x</div>'
    assert html_paragraphs(page) == ["Klicken Sie auf OK."]


def test_split_sentences():
    para = "Öffnen Sie das Menü. Wählen Sie eine Datei aus! ¿Quiere guardar? Fin."
    assert split_sentences(para) == [
        "Öffnen Sie das Menü.",
        "Wählen Sie eine Datei aus!",
        "¿Quiere guardar?",
        "Fin.",
    ]


@pytest.mark.parametrize(
    "sentence,ok",
    [
        ("Wählen Sie die Zellen aus, die Sie formatieren möchten.", True),
        ("¿Desea guardar los cambios en el documento?", False),  # v1 rules: must start with a letter
        ("L'image est insérée dans le document.", True),
        ("Die Tabelle enthält 12 Zeilen.", False),  # digits
        ("Speichern Sie die Datei als PDF.", False),  # acronym
        ("wählen Sie die Zellen aus.", False),  # lower-case start
        ("Wählen Sie Format - Zellen", False),  # no final punctuation
        ("Öffnen Sie die Datei (optional).", False),  # brackets
        ("Öffnen Sie die Datei test.odt sofort.", False),  # file name
    ],
)
def test_is_clean_sentence(sentence, ok):
    assert is_clean_sentence(sentence) is ok


@pytest.mark.parametrize(
    "raw,norm",
    [
        (
            "Wählen Sie die Zellen aus, die Sie formatieren möchten.",
            "wählen sie die zellen aus die sie formatieren möchten",
        ),
        ("L’image est «insérée» dans le document !", "l'image est insérée dans le document"),
        ("¿Desea guardar los cambios?", "desea guardar los cambios"),
        ("Server-Authentifizierung für E-Mails.", "server authentifizierung für e mails"),
        ("Zażółć gęślą jaźń 42 razy.", "zażółć gęślą jaźń razy"),
        ("'Quoted' words_here", "quoted words here"),
    ],
)
def test_normalize_transcript_is_mls_style(raw, norm):
    assert normalize_transcript(raw) == norm
