"""Projectors: the paper's linear one and the CTC-posterior mix."""

import torch

from llm_asr.models.projector import CtcMixProjector, LinearProjector

BLANK = 0


def _logits(best: list[list[int]], vocab: int) -> torch.Tensor:
    """One-hot-ish CTC logits whose argmax per frame is `best`."""
    out = torch.full((len(best), len(best[0]), vocab), -20.0)
    for b, row in enumerate(best):
        for t, v in enumerate(row):
            out[b, t, v] = 20.0
    return out


def test_linear_projector_shapes() -> None:
    proj = LinearProjector(enc_dim=8, llm_dim=16, stride_ms=240)
    emb, lens = proj(torch.randn(2, 13, 8), torch.tensor([13, 6]))
    assert emb.shape == (2, 3, 16) and lens.tolist() == [3, 1]


def test_ctc_mix_collapses_and_drops_blanks() -> None:
    pieces = torch.randn(5, 4)
    pieces[BLANK] = 0
    proj = CtcMixProjector(enc_dim=3, llm_dim=4, pieces=pieces, blank=BLANK)
    best = [[0, 2, 2, 0, 2, 3, 3, 0, 0], [1, 1, 0, 4, 0, 0, 0, 0, 0]]
    lens_in = torch.tensor([9, 4])  # second row: frames after 4 are padding
    emb, lens = proj(torch.randn(2, 9, 3), lens_in, _logits(best, 5))
    # row 0: 2 | 2 | 3 (blank splits the repeated 2); row 1: 1 | 4
    assert lens.tolist() == [3, 2]
    assert emb.shape == (2, 3, 4)
    # the learned projection starts at zero, so the output is the LLM embedding of each piece
    torch.testing.assert_close(emb[0], pieces[[2, 2, 3]], atol=1e-5, rtol=0)
    torch.testing.assert_close(emb[1, :2], pieces[[1, 4]], atol=1e-5, rtol=0)


def test_ctc_mix_all_blank_keeps_one_frame() -> None:
    proj = CtcMixProjector(enc_dim=3, llm_dim=4, pieces=torch.randn(5, 4), blank=BLANK)
    emb, lens = proj(torch.randn(1, 6, 3), torch.tensor([6]), _logits([[0] * 6], 5))
    assert lens.tolist() == [1] and emb.shape == (1, 1, 4)


def test_ctc_mix_gradients_reach_encoder_and_projection() -> None:
    proj = CtcMixProjector(enc_dim=3, llm_dim=4, pieces=torch.randn(5, 4), blank=BLANK)
    enc = torch.randn(1, 6, 3, requires_grad=True)
    logits = torch.randn(1, 6, 5, requires_grad=True)
    emb, _ = proj(enc, torch.tensor([6]), logits)
    emb.sum().backward()
    assert enc.grad is not None and proj.proj.weight.grad is not None
    assert proj.pieces.requires_grad is False


def test_ctc_mix_merge_space_uses_word_start_embeddings_and_drops_boundaries() -> None:
    space = 1
    pieces, word_start = torch.randn(5, 4), torch.randn(5, 4)
    proj = CtcMixProjector(enc_dim=3, llm_dim=4, pieces=pieces, blank=BLANK, word_start=word_start, space=space)
    best = [[1, 2, 2, 0, 3, 1, 0, 4, 4, 1, 2], [2, 0, 2, 1, 1, 3, 0, 0, 0, 0, 0]]
    emb, lens = proj(torch.randn(2, 11, 3), torch.tensor([11, 6]), _logits(best, 5))
    # row 0: _2 3 _4 _2 (boundaries dropped, each word's first character from word_start)
    # row 1: _2 2 _3 (a blank alone does not open a word; the utterance's first character does)
    assert lens.tolist() == [4, 3]
    torch.testing.assert_close(emb[0], torch.stack([word_start[2], pieces[3], word_start[4], word_start[2]]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(emb[1, :3], torch.stack([word_start[2], pieces[2], word_start[3]]), atol=1e-5, rtol=0)
