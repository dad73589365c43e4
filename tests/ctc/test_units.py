"""Encoder shapes, tokenizer, CTC decoding and WER/CER arithmetic on known inputs."""

from __future__ import annotations

import math

import pytest
import torch

from llm_asr.config import AugmentConfig, CtcConfig, EncoderConfig, TokenizerConfig
from llm_asr.decoding.ctc import greedy_ids, prefix_beam_ids
from llm_asr.evaluation import comparison_table, markdown_table, metrics_json, score_language
from llm_asr.models.encoder import SpecAugment, build_ctc_model, build_encoder
from llm_asr.models.tokenizer import BLANK, train_tokenizer

SMALL = EncoderConfig(d_model=32, num_layers=2, num_heads=2, ffn_dim=64, kernel_size=7, subsampling_channels=8)
TEXTS = ["zażółć gęślą jaźń", "le café est très bon", "über die brücke gehen", "o coração não é pão"] * 10


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 101, 397])
def test_encoder_shapes_and_lengths(length, factor):
    torch.manual_seed(0)
    enc = build_encoder(SMALL.model_copy(update={"subsampling": factor}), 80).eval()
    assert enc.frame_ms == 10 * factor  # 40 or 80 ms frames from 10 ms features
    lens = torch.tensor([length, max(1, length // 3)])
    out, out_lens = enc(torch.randn(2, length, 80), lens)
    assert out.shape == (2, math.ceil(length / factor), 32)
    assert out_lens.tolist() == [math.ceil(n / factor) for n in lens.tolist()]
    assert enc.output_lengths(lens).tolist() == out_lens.tolist()


@pytest.mark.parametrize("factor,frames", [(4, [15, 33]), (8, [8, 17])])
def test_batched_equals_alone(factor, frames):
    """Padding never leaks into real frames (subsampling and depthwise convs are masked)."""
    torch.manual_seed(0)
    enc_cfg = SMALL.model_copy(update={"subsampling": factor})
    model = build_ctc_model(CtcConfig(encoder=enc_cfg), 80, 20, train=False).eval()
    a, b = torch.randn(1, 57, 80), torch.randn(1, 130, 80)
    alone, _ = model(a, torch.tensor([57]))
    batch = torch.cat([torch.nn.functional.pad(a, (0, 0, 0, 73)), b])
    both, lens = model(batch, torch.tensor([57, 130]))
    assert lens.tolist() == frames
    torch.testing.assert_close(both[0, :frames[0]], alone[0], atol=1e-5, rtol=1e-5)


def test_upsampled_ctc_head_emits_k_outputs_per_frame_and_can_fit_dense_text():
    """ctc_upsample=2: 2 CTC outputs per 40 ms frame, each a separate class distribution; a target
    longer than the frames (impossible for a x1 head: infinite loss) gets a finite CTC loss."""
    from llm_asr.models.ctc_task import ctc_loss

    torch.manual_seed(0)
    cfg = CtcConfig(encoder=SMALL.model_copy(update={"ctc_upsample": 2}))
    model = build_ctc_model(cfg, 80, 20, train=False).eval()
    logits, lens = model(torch.randn(2, 40, 80), torch.tensor([40, 21]))
    assert logits.shape == (2, 20, 20) and lens.tolist() == [20, 12]
    enc, _ = model.encoder(torch.randn(1, 40, 80), torch.tensor([40]))
    pair = model.ctc_head(enc)[0, :2]  # the two outputs of frame 0 come from different weights
    assert not torch.allclose(pair[0], pair[1])
    targets = torch.arange(1, 16)[None]  # 15 tokens over 10 frames
    x1 = ctc_loss(torch.randn(1, 10, 20), torch.tensor([10]), targets, torch.tensor([15]))
    x2 = ctc_loss(torch.randn(1, 20, 20), torch.tensor([20]), targets, torch.tensor([15]))
    assert x1.item() == 0.0 and math.isfinite(x2.item()) and x2.item() > 0  # zero_infinity zeroes x1


def test_specaugment_masks_only_in_training():
    aug = SpecAugment(AugmentConfig(freq_masks=2, freq_mask_width=10, time_masks=2, time_mask_ratio=0.1))
    x = torch.ones(4, 200, 80)
    assert torch.equal(aug.eval()(x), x)
    torch.manual_seed(0)
    y = aug.train()(x)
    assert y.shape == x.shape and (y == 0).any() and (y == 1).float().mean() > 0.5


@pytest.mark.parametrize("model_type", ["unigram", "char"])
def test_tokenizer_round_trip(tmp_path, model_type):
    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=48, model_type=model_type), tmp_path / "t.model")
    assert tok.blank == BLANK == 0 and tok.pieces[0] == "<blank>" and len(tok.pieces) == tok.num_classes
    for text in TEXTS[:4]:
        ids = tok.encode(text)
        assert BLANK not in ids and max(ids) < tok.num_classes
        assert tok.decode(ids) == text
        assert tok.decode([BLANK] + ids + [BLANK]) == text


def _posteriors(path: list[int], vocab: int = 5) -> torch.Tensor:
    lp = torch.full((1, len(path), vocab), -10.0)
    for t, c in enumerate(path):
        lp[0, t, c] = 0.0
    return lp


def test_greedy_collapses_repeats_and_drops_blanks():
    lp = _posteriors([0, 1, 1, 0, 2, 2, 0, 2, 3, 3])
    assert greedy_ids(lp, torch.tensor([10])) == [[1, 2, 2, 3]]
    assert greedy_ids(lp, torch.tensor([5])) == [[1, 2]]  # frames beyond the length are ignored


def test_prefix_beam_beats_best_path():
    """Best path is blank-blank (p=0.36) but 'a' has p=1-0.36-... = 0.64 summed over paths."""
    p = torch.tensor([[0.6, 0.4], [0.6, 0.4]]).log()  # classes: blank, a
    assert greedy_ids(p[None], torch.tensor([2])) == [[]]
    assert prefix_beam_ids(p, beam=4) == [1]


def test_scores_on_known_strings():
    # words: 1 substitution + 1 insertion over 5; chars: 1 substitution + 2 insertions (" c") over 14
    m = score_language(["the cat sat", "a b"], ["the cat sit", "a b c"])
    assert m == {"wer": 40.0, "cer": round(100 * 3 / 14, 2), "utterances": 2}
    j = metrics_json("ctc", "m", {"german": (["a b"], ["a b"]), "polish": (["a b"], ["a"])})
    assert j["average_wer"] == 25.0 and j["languages"]["polish"]["wer"] == 50.0
    assert set(j) == {"system", "model", "average_wer", "languages"}
    assert "| polish | 50.00 |" in markdown_table(j)
    assert "| german | 0.00 | 0.00 | 0.00 | 0.00 |" in comparison_table({"ctc": j, "speech-llm": j})
