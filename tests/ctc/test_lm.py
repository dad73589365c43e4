"""The CTC baseline's word n-gram LM: Kneser-Ney arithmetic, ARPA normalization, KenLM loading,
and lexicon beam search preferring words the LM knows over the acoustically best spelling."""

from __future__ import annotations

import math

import pytest
import torch

from llm_asr.config import CtcLmConfig, TokenizerConfig
from llm_asr.decoding.ctc import LEXICON_FILE, LM_FILE, LmCtcDecoder, lexicon_spelling
from llm_asr.decoding.lm import EOS, UNK, ArpaModel, train_arpa, write_lexicon
from llm_asr.errors import UserError
from llm_asr.models.tokenizer import train_tokenizer

CORPUS = [
    "click the button", "click the icon", "choose the button", "choose format character",
    "the button opens the dialog", "back to the dialog", "go back to the start", "click back to top",
]


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.arpa"
    stats = train_arpa(CORPUS, 3, path)
    return ArpaModel(path), stats


def test_arpa_is_a_normalized_distribution_for_every_history(arpa):
    """sum_w p(w | h) = 1 over the vocabulary (+ </s>, <unk>) for seen, unseen and empty histories."""
    model, stats = arpa
    vocab = sorted(model.vocab - {"<s>"})
    assert EOS in vocab and UNK in vocab and stats["ngrams_3"] > 0 and stats["lm_sentences"] == len(CORPUS)
    for hist in [(), ("<s>",), ("the",), ("click", "the"), ("back", "to"), ("dialog", "click"), ("zzz", "yyy")]:
        total = sum(math.exp(model.logprob(w, hist)) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), hist


def test_kneser_ney_prefers_seen_continuations_and_counts_contexts(arpa):
    model, _ = arpa
    assert model.logprob("the", ("click",)) > model.logprob("dialog", ("click",))
    assert model.logprob("to", ("go", "back")) > model.logprob("button", ("go", "back"))
    # "to" follows only "back" (one context); "the" follows many words: KN gives "the" more unigram mass
    assert model.logprob("the", ("zzz",)) > model.logprob("to", ("zzz",))
    assert model.sentence_logprob("back to the dialog") > model.sentence_logprob("bacto the dialog")


def test_kenlm_loads_the_arpa_and_scores_like_python(arpa, tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import create_word_dict

    model, _ = arpa
    path = tmp_path / "lm.arpa"
    train_arpa(CORPUS, 3, path)
    words = create_word_dict({w: [[w]] for w in sorted(model.vocab)})
    kenlm = KenLM(str(path), words)
    state = kenlm.start(False)
    total_kenlm = 0.0  # log10, as KenLM scores
    for w in "back to the dialog".split() + [EOS]:
        state, score = kenlm.score(state, words.get_index(w)) if w != EOS else kenlm.finish(state)
        total_kenlm += score
    assert total_kenlm * math.log(10) == pytest.approx(model.sentence_logprob("back to the dialog"), abs=1e-3)


def _char_model_dir(tmp_path):
    tok = train_tokenizer(CORPUS * 5, TokenizerConfig(vocab_size=64, model_type="char"), tmp_path / "tokenizer.model")
    train_arpa(CORPUS, 3, tmp_path / LM_FILE)
    spell, silence = lexicon_spelling(tok)
    stats = write_lexicon([w for s in CORPUS for w in s.split()] + ["naïve"], spell, tmp_path / LEXICON_FILE)
    assert silence == "\u2581" and stats["lexicon_skipped_words"] == 1  # "ï" is not in the vocabulary
    return tok


def _emissions(tok, spelled: str, after_blank: dict[int, tuple[str, float]] | None = None) -> torch.Tensor:
    """Log-probs [1, T, V] that spell `spelled`: one confident frame per piece and a blank frame
    after each; `after_blank[k] = (piece, logp)` makes that piece a runner-up in the k-th blank frame."""
    frames = []
    for k, i in enumerate(tok.encode(spelled)):
        for best in (i, 0):
            row = torch.full((tok.num_classes,), -12.0)
            row[best] = -0.01
            frames.append(row)
        if after_blank and k in after_blank:
            piece, logp = after_blank[k]
            frames[-1][0], frames[-1][tok.pieces.index(piece)] = -0.2, logp
    return torch.stack(frames)[None]


def test_lm_beam_search_writes_the_lexicon_words_the_acoustics_half_miss(tmp_path):
    tok = _char_model_dir(tmp_path)
    # the acoustics prefer "bacto" (a merged word, its "k" only a runner-up after the "c")
    emissions = _emissions(tok, "bacto the dialog", after_blank={3: ("k", -1.8)})
    lens = torch.tensor([emissions.shape[1]])
    cfg = CtcLmConfig(weight=2.0, word_score=0.0, beam_size=64, beam_size_token=tok.num_classes, beam_threshold=50)
    assert LmCtcDecoder(tmp_path, tok, cfg)(emissions, lens) == ["back to the dialog"]
    clean = _emissions(tok, "click the button")
    assert LmCtcDecoder(tmp_path, tok, cfg)(clean, torch.tensor([clean.shape[1]])) == ["click the button"]


def test_lm_decoding_without_lm_files_says_what_to_do(tmp_path):
    tok = train_tokenizer(CORPUS * 5, TokenizerConfig(vocab_size=64, model_type="char"), tmp_path / "tokenizer.model")
    with pytest.raises(UserError, match="ctc.lm.weight=0"):
        LmCtcDecoder(tmp_path, tok, CtcLmConfig(weight=1.0))


def test_subword_vocabulary_spells_words_as_the_tokenizer_segments_them(tmp_path):
    tok = train_tokenizer(CORPUS * 5, TokenizerConfig(vocab_size=40, model_type="unigram"), tmp_path / "t.model")
    spell, silence = lexicon_spelling(tok)
    assert silence == "<unk>"
    pieces = spell("button")
    assert pieces and pieces[0].startswith("\u2581") and "".join(pieces) == "\u2581button"
