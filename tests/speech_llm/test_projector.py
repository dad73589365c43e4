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


class _WordTok:
    """A stand-in LLM tokenizer with a fixed word table: ' ab' -> [3, 4], any other word -> [5]."""

    def __call__(self, text: str, add_special_tokens: bool = False):
        class Out:
            input_ids = [3, 4] if text == " ab" else [5] if text.strip() else [6]
        return Out()


def _ctc_words(enc_dim: int = 3, k: int = 1):
    from llm_asr.models.projector import CtcWordsProjector

    table = torch.nn.Embedding(8, 4)
    pieces = ["<blank>", "\u2581", "a", "b", "c", "<unk>"]  # a character CTC vocabulary
    return CtcWordsProjector(enc_dim, 4, pieces, BLANK, _WordTok(), table), table


def test_ctc_words_splits_greedy_hypothesis_into_words_with_frame_spans() -> None:
    proj, _ = _ctc_words()
    # "ab" (frames 1-3; the blank between the two a's is not there, so a-a collapses) "c" "c"
    assert proj.words([1, 2, 2, 3, 0, 1, 4, 0, 4, 0]) == [("ab", 0, 4), ("cc", 5, 9)]
    assert proj.words([0, 2, 0, 1, 0, 5, 3]) == [("a", 1, 2), ("b", 3, 7)]  # no leading boundary, <unk> skipped
    assert proj.words([0, 0, 1, 0]) == []


def test_ctc_words_reads_lm_beam_search_hypotheses_with_frame_spans() -> None:
    """An LM hypothesis (torchaudio CTCHypothesis: collapsed tokens and the frame each starts at,
    counted from flashlight's silence frame before frame 0) gives the same (word, span) triples."""
    from types import SimpleNamespace

    proj, _ = _ctc_words()
    hyp = SimpleNamespace(tokens=torch.tensor([1, 2, 3, 1, 4, 1]), timesteps=torch.tensor([0, 2, 3, 5, 7, 9]))
    assert proj.lm_words(hyp, 8) == [("ab", 0, 3), ("c", 4, 7)]
    # the greedy path those frames spell gives the same words
    assert proj.words([1, 2, 3, 0, 1, 0, 4, 0]) == [("ab", 0, 3), ("c", 4, 7)]


def test_ctc_words_embeds_llm_tokens_of_each_word_plus_zero_initialised_residual() -> None:
    proj, table = _ctc_words()
    best = [[1, 2, 3, 0, 1, 4, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]
    enc = torch.randn(2, 8, 3, requires_grad=True)
    emb, lens = proj(enc, torch.tensor([8, 5]), _logits(best, 6))
    assert lens.tolist() == [3, 1]  # " ab" -> 2 tokens, " c" -> 1; an empty hypothesis -> one " " slot
    torch.testing.assert_close(emb[0], table.weight[[3, 4, 5]].detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(emb[1, 0], table.weight[6].detach(), atol=1e-6, rtol=0)
    assert emb[1, 1:].abs().sum() == 0  # padding
    emb.sum().backward()  # the residual path is what reaches the encoder
    assert proj.proj.weight.grad is not None and enc.grad is not None
    assert not any(n.startswith("_embedding") for n, _ in proj.named_parameters())  # the LLM table is not ours


def test_ctc_words_residual_is_the_mean_encoder_state_of_the_word() -> None:
    proj, table = _ctc_words(k=2)
    with torch.no_grad():
        proj.proj.weight.copy_(torch.eye(4, 3))
        proj.gain.zero_()
    enc = torch.arange(12, dtype=torch.float).reshape(1, 4, 3)
    # an upsampled (x2) CTC head: 8 outputs over 4 encoder frames; "ab" on outputs 0-2 -> frames 0-1
    emb, lens = proj(enc, torch.tensor([4]), _logits([[2, 0, 3, 0, 1, 4, 4, 0]], 6))
    assert lens.tolist() == [3]
    torch.testing.assert_close(emb[0, 0, :3], enc[0, :2].mean(0))
    torch.testing.assert_close(emb[0, 2, :3], enc[0, 2:4].mean(0))


def _token_ctc(compress: bool = True, layers: int = 1):
    from llm_asr.config import TokenCtcConfig
    from llm_asr.models.projector import TokenCtcProjector

    torch.manual_seed(0)
    table = torch.randn(6, 16)  # 6 LLM tokens, hidden 16
    tcfg = TokenCtcConfig(d_model=8, num_layers=layers, num_heads=2, kernel_size=3, dropout=0.0, compress=compress)
    return TokenCtcProjector(enc_dim=4, llm_dim=16, stride_ms=80, frame_ms=40, token_ids=torch.arange(10, 16),
                             table=table, tcfg=tcfg), table


def test_token_ctc_compresses_to_the_argmax_tokens() -> None:
    """Blank-argmax frames are dropped and runs merged; at init (residual zero) each kept position is the
    posterior mix of the LLM's own embeddings, so it lies in the span of the table."""
    proj, table = _token_ctc()
    enc, lens = torch.randn(2, 11, 4), torch.tensor([11, 5])
    emb, emb_lens, logits, logit_lens = proj.forward_all(enc, lens)
    assert logits.shape == (2, 6, 7) and logit_lens.tolist() == [6, 3]  # ceil(T / 2) stacked frames, 1 + K
    best = logits.argmax(-1)
    for i in range(2):
        row = best[i, : int(logit_lens[i])].tolist()
        runs = [c for j, c in enumerate(row) if c != 0 and (j == 0 or c != row[j - 1])]
        assert int(emb_lens[i]) == max(len(runs), 1)
    post = logits.softmax(-1)[0, :, 1:]
    mix = (post / post.sum(-1, keepdim=True)) @ table  # [N, H]
    kept = [j for j, c in enumerate(best[0].tolist()) if c != 0]
    if kept and len(kept) == int(emb_lens[0]):  # no merged run: each position is one frame's mix
        torch.testing.assert_close(emb[0, : len(kept)], mix[kept], atol=1e-5, rtol=0)


def test_token_ctc_is_differentiable_and_uncompressed_keeps_every_frame() -> None:
    proj, _ = _token_ctc(compress=False)
    enc = torch.randn(2, 12, 4, requires_grad=True)
    emb, lens = proj(enc, torch.tensor([12, 7]))
    assert emb.shape == (2, 6, 16) and lens.tolist() == [6, 4]
    assert emb[1, 4:].abs().max() == 0  # padding stays zero
    emb.sum().backward()
    assert enc.grad is not None and enc.grad.abs().sum() > 0  # the LLM input is a differentiable function of the frames
    assert proj.inp.weight.grad.abs().sum() > 0 and proj.query.weight.grad.abs().sum() > 0


def test_token_vocab_and_targets_cover_the_train_text() -> None:
    from llm_asr.models.align_task import TokenTargets
    from llm_asr.models.projector import llm_token_vocab

    from llm_asr.config import LlmConfig
    from llm_asr.models.llm import _smollm2_tokenizer

    tok = _smollm2_tokenizer(LlmConfig().name_or_path)
    ids = llm_token_vocab(["the dialog box", "click save"], tok)
    targets = TokenTargets(torch.tensor(ids), tok)
    assert all(c > 0 for t in ("the dialog box", "click save") for c in targets.encode(t)) and targets.unknown == 0
    assert targets.encode("the xylophone") and targets.unknown > 0  # unseen tokens: counted and dropped
    texts = targets.greedy_text(torch.nn.functional.one_hot(torch.tensor([[0] + targets.encode("click save")]),
                                                             len(ids) + 1).float(), torch.tensor([3]))
    assert texts == ["click save"]
