"""Decoding: batched == single, KV cache on == off, per-row budgets, the repetition-loop guard."""

import pytest
import torch

from llm_asr.decoding.generate import GenerationSettings, generate, loop_cut, token_budget
from tests.speech_llm.helpers import tiny_speech_llm

LENS = [7, 4, 2]


def _rows(model, emb):
    whole = model.build_inputs(emb, torch.tensor(LENS))
    singles = [model.build_inputs(emb[i : i + 1, : LENS[i]], torch.tensor([LENS[i]])) for i in range(len(LENS))]
    return whole, singles


@pytest.mark.parametrize("beam", [1, 3])
def test_batch_equals_single_and_cache_equals_no_cache(tiny_llm_factory, beam: int) -> None:
    llm, tok = tiny_llm_factory()
    model = tiny_speech_llm(llm, tok).eval()
    torch.manual_seed(1)
    emb = torch.randn(3, 7, 64)
    whole, singles = _rows(model, emb)
    s = GenerationSettings(beam_size=beam, max_repeat_run=0)
    budgets = [12, 6, 9]
    batched = generate(model, whole, budgets, s)
    alone = [generate(model, singles[i], [budgets[i]], s)[0] for i in range(3)]
    assert batched == alone
    assert [len(o) for o in batched] == budgets  # a random LLM never says EOS: each stops at its budget
    assert len(set(batched[0])) > 3  # not a degenerate constant output
    no_cache = generate(model, whole, budgets, GenerationSettings(beam_size=beam, max_repeat_run=0, use_cache=False))
    assert no_cache == batched


def _looping(model, tok, cycle=(100, 101, 102)):
    """Make the tiny Llama a deterministic loop: BOS -> a -> b -> c -> a -> ...
    Attention and MLP outputs are zeroed, so the last hidden state is the current token's
    embedding, and the output matrix maps each cycle token's direction to its successor."""
    llm = model.base_llm
    with torch.no_grad():
        for layer in llm.model.layers:
            layer.self_attn.o_proj.base_layer.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, out = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
        out.zero_()
        basis = torch.eye(emb.shape[1])
        emb[tok.bos_token_id] = basis[len(cycle) - 1]
        for i, t in enumerate(cycle):
            emb[t] = basis[i]
            out[t] = 10 * basis[(i - 1) % len(cycle)]
    return model


def test_repetition_guard_stops_a_looping_model(tiny_llm_factory) -> None:
    llm, tok = tiny_llm_factory()
    model = _looping(tiny_speech_llm(llm, tok).eval(), tok)
    inp = model.build_inputs(torch.randn(1, 3, 64), torch.tensor([3]))
    unguarded = generate(model, inp, [40], GenerationSettings(max_repeat_run=0))
    assert unguarded == [[100, 101, 102] * 13 + [100]]  # loops to the budget
    for beam in (1, 2):
        guarded = generate(model, inp, [40], GenerationSettings(beam_size=beam, max_repeat_run=3))
        assert guarded == [[100, 101, 102]]  # stopped after 3 repeats, repeats cut to one
    penalised = generate(model, inp, [40], GenerationSettings(max_repeat_run=0, no_repeat_ngram_size=2))
    assert penalised[0][:4] == [100, 101, 102, 100] and penalised[0][4] != 101  # a repeated bigram is blocked


def test_loop_cut() -> None:
    assert loop_cut([1, 2, 3, 4], 3) is None
    assert loop_cut([9, 5, 5, 5], 3) == 2
    assert loop_cut([9, 1, 2, 1, 2, 1, 2], 3) == 3
    assert loop_cut([1, 2, 1, 2, 1], 3) is None


def test_token_budget_grows_with_duration() -> None:
    assert token_budget([0.5, 4.0, 10.0], tokens_per_second=8.0, minimum=8) == [8, 32, 80]


@pytest.mark.parametrize("beam", [1, 3])
def test_finished_rows_leave_the_llm_batch(tiny_llm_factory, monkeypatch, beam: int) -> None:
    """A finished hypothesis never runs the LLM again (its logits are never read): with budgets
    12/6/9 the LLM sees 3, then 2, then 1 utterance(s) (x beam) -- and the output is unchanged."""
    import llm_asr.decoding.generate as gen

    llm, tok = tiny_llm_factory()
    model = tiny_speech_llm(llm, tok).eval()
    torch.manual_seed(1)
    whole, singles = _rows(model, torch.randn(3, 7, 64))
    budgets = [12, 6, 9]
    s = GenerationSettings(beam_size=beam, max_repeat_run=0)
    rows: list[int] = []
    run = gen._Stepper._run
    monkeypatch.setattr(gen._Stepper, "_run", lambda self, e, *a: rows.append(e.shape[0]) or run(self, e, *a))
    batched = generate(model, whole, budgets, s)
    per_step = rows[1:]  # the batched search's calls after its first (prompt) one
    assert batched == [generate(model, singles[i], [budgets[i]], s)[0] for i in range(3)]
    assert per_step[0] == 3 * beam and per_step[-1] == beam  # only the 12-token row is left at the end
    assert sorted(set(per_step), reverse=True) == [3 * beam, 2 * beam, beam] and per_step == sorted(per_step, reverse=True)
