"""Joint CTC/LLM decoding: the prefix scores equal a brute-force sum over alignments, and the joint
search follows the CTC where the CTC is sure, batched the same as alone."""

import itertools
import math

import pytest
import torch

from llm_asr.decoding.ctc_prefix import CtcPrefixScorer, token_classes
from llm_asr.decoding.generate import GenerationSettings, generate
from tests.speech_llm.helpers import tiny_speech_llm

EOS = 9


def _collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out, prev = [], 0
    for c in path:
        if c != 0 and c != prev:
            out.append(c)
        prev = c
    return tuple(out)


def _brute(logp: torch.Tensor, length: int) -> tuple[dict, dict]:
    """{labels: P(collapse == labels)}, {labels: P(collapse starts with labels)} over all paths."""
    full: dict = {}
    for path in itertools.product(range(logp.shape[1]), repeat=length):
        p = math.exp(sum(float(logp[t, c]) for t, c in enumerate(path)))
        full[_collapse(path)] = full.get(_collapse(path), 0.0) + p
    prefix: dict = {}
    for labels, p in full.items():
        for n in range(len(labels) + 1):
            prefix[labels[:n]] = prefix.get(labels[:n], 0.0) + p
    return full, prefix


def test_prefix_scores_equal_the_sum_over_alignments() -> None:
    torch.manual_seed(0)
    logp = torch.randn(2, 5, 4).log_softmax(-1)  # classes 0 (blank), 1, 2, 3; LLM ids = classes
    lens = torch.tensor([5, 4])  # the second row is padded: its fifth frame must not count
    classes = token_classes(torch.tensor([1, 2, 3]), vocab_size=10)
    for row in range(2):
        full, prefix = _brute(logp[row], int(lens[row]))
        scorer = CtcPrefixScorer(logp[row : row + 1], lens[row : row + 1], classes)
        for labels in [(1,), (2, 2), (1, 3, 1), (3, 2, 1)]:
            state = scorer.initial()
            for i, c in enumerate(labels):
                tokens = torch.tensor([[c, EOS]])
                scores, r = scorer.extend(state, tokens, EOS)
                want_prefix = prefix.get(labels[: i + 1], 0.0)
                assert math.isclose(math.exp(float(scores[0, 0])), want_prefix, rel_tol=1e-4, abs_tol=1e-9)
                if i > 0:  # EOS after labels[:i]: the probability of exactly that transcript
                    assert math.isclose(math.exp(float(scores[0, 1])), full.get(labels[:i], 0.0),
                                        rel_tol=1e-4, abs_tol=1e-9)
                grow = torch.tensor([True])
                state = CtcPrefixScorer.select(state, torch.tensor([0]), torch.tensor([0]), grow,
                                               classes[tokens[0, :1]], scores[0, :1], r)
            final, _ = scorer.extend(state, torch.tensor([[EOS]]), EOS)
            assert math.isclose(math.exp(float(final[0, 0])), full.get(labels, 0.0), rel_tol=1e-4, abs_tol=1e-9)


def _sure_ctc(seq: list[int], frames: int, vocab: int, token_ids: torch.Tensor) -> torch.Tensor:
    """Token-CTC log posteriors [frames, 1+K] spelling `seq` (LLM ids) on every other frame, blank between."""
    cls = {int(t): k + 1 for k, t in enumerate(token_ids)}
    logits = torch.full((frames, 1 + len(token_ids)), -8.0)
    logits[:, 0] = 8.0
    for i, t in enumerate(seq):
        logits[2 * i, 0], logits[2 * i, cls[t]] = -8.0, 8.0
    return logits.log_softmax(-1)


@pytest.mark.parametrize("beam", [1, 3])
def test_joint_search_follows_a_sure_ctc_and_batches_like_single(tiny_llm_factory, beam: int) -> None:
    llm, tok = tiny_llm_factory()
    model = tiny_speech_llm(llm, tok).eval()
    vocab = model.base_llm.get_output_embeddings().weight.shape[0]
    token_ids = torch.arange(100, 140)
    classes = token_classes(token_ids, vocab)
    seqs = [[101, 120, 120, 133, 107], [139, 100], [115, 116, 117, 118]]
    frames = [10, 5, 8]
    logp = torch.full((3, 10, 1 + len(token_ids)), float("-inf"))
    for i, (seq, n) in enumerate(zip(seqs, frames)):
        logp[i, :n] = _sure_ctc(seq, n, vocab, token_ids)
    lens = torch.tensor(frames)
    torch.manual_seed(1)
    emb = torch.randn(3, 7, 64)
    inp = model.build_inputs(emb, torch.tensor([7, 4, 2]))
    s = GenerationSettings(beam_size=beam, ctc_weight=0.9, ctc_candidates=vocab, max_repeat_run=0)
    budgets = [12, 12, 12]
    batched = generate(model, inp, budgets, s, CtcPrefixScorer(logp, lens, classes))
    # a random LLM never says EOS by itself (test_generate); with the CTC it stops where the audio ends
    assert batched == seqs
    for i in range(3):
        single = model.build_inputs(emb[i : i + 1, : [7, 4, 2][i]], torch.tensor([[7, 4, 2][i]]))
        alone = generate(model, single, [12], s, CtcPrefixScorer(logp[i : i + 1], lens[i : i + 1], classes))
        assert alone == [batched[i]]
    llm_alone = generate(model, inp, budgets, GenerationSettings(beam_size=beam, max_repeat_run=0))
    assert llm_alone != seqs


def test_ctc_weight_without_a_scorer_is_an_error(tiny_llm_factory) -> None:
    llm, tok = tiny_llm_factory()
    model = tiny_speech_llm(llm, tok).eval()
    inp = model.build_inputs(torch.randn(1, 3, 64), torch.tensor([3]))
    with pytest.raises(ValueError, match="token_ctc"):
        generate(model, inp, [4], GenerationSettings(ctc_weight=0.5))


def test_an_impossible_prefix_is_penalised_never_revived() -> None:
    """A hypothesis holding a token the CTC cannot emit stays impossible: every later extension costs
    the floor (the empty-prefix rule must not restart it), with no NaN or +inf in the gains."""
    from llm_asr.decoding.ctc_prefix import score_gain

    torch.manual_seed(0)
    logp = torch.randn(1, 6, 4).log_softmax(-1)
    classes = token_classes(torch.tensor([1, 2, 3]), vocab_size=10)
    scorer = CtcPrefixScorer(logp, torch.tensor([6]), classes)
    state = scorer.initial()
    tokens = torch.tensor([[1, 5, EOS]])  # 5: outside the CTC vocabulary
    scores, r = scorer.extend(state, tokens, EOS)
    gain = score_gain(scores, state)
    assert float(gain[0, 1]) == -1e4 and float(gain[0, 0]) < 0
    dead = CtcPrefixScorer.select(state, torch.tensor([0]), torch.tensor([1]), torch.tensor([True]),
                                  classes[tokens[0, 1:2]], scores[0, 1:2], r)
    later, _ = scorer.extend(dead, torch.tensor([[1, 2, EOS]]), EOS)
    assert torch.isneginf(later).all()
    assert torch.equal(score_gain(later, dead), torch.full((1, 3), -1e4))
