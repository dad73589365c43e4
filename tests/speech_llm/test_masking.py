"""Input layout and label masking: -100 over padding, audio, prompt and BOS; EOS is a target."""

import torch

from llm_asr.models.speech_llm import IGNORE
from tests.speech_llm.helpers import tiny_speech_llm


def test_layout_and_labels(tiny_llm_factory) -> None:
    llm, tok = tiny_llm_factory()
    model = tiny_speech_llm(llm, tok, prompt_ids=[77, 78])
    emb = torch.randn(2, 4, 64)
    inp = model.build_inputs(emb, torch.tensor([4, 2]), [[10, 11, 12], [13]])
    # row 0: 4 audio + 2 prompt + BOS + 3 text + EOS = 11; row 1: 2 + 2 + 1 + 1 + 1 = 7 (left-padded by 4)
    assert inp.embeds.shape == (2, 11, 64)
    assert inp.mask[1].tolist() == [0] * 4 + [1] * 7
    assert inp.labels[0].tolist() == [IGNORE] * 7 + [10, 11, 12, tok.eos_token_id]
    assert inp.labels[1].tolist() == [IGNORE] * 9 + [13, tok.eos_token_id]
    assert inp.positions[1].tolist() == [0] * 4 + list(range(7))
    torch.testing.assert_close(inp.embeds[1, 4:6], emb[1, :2])  # audio sits right before the prompt
    bos = model.embed_tokens(torch.tensor([tok.bos_token_id]))[0]
    torch.testing.assert_close(inp.embeds[0, 6], bos)
    assert tok.eos_token_id != tok.pad_token_id


def test_head_and_answer_prefix_sit_around_audio_and_bos_and_are_not_targets(tiny_llm_factory) -> None:
    llm, tok = tiny_llm_factory()
    model = tiny_speech_llm(llm, tok, prompt_ids=[77])
    model.head_ids, model.answer_ids = [50, 51, 52], [60, 61]
    emb = torch.randn(2, 3, 64)
    inp = model.build_inputs(emb, torch.tensor([3, 1]), [[10, 11], [12]])
    # row 0: 3 head + 3 audio + 1 prompt + BOS + 2 answer + 2 text + EOS = 13; row 1: 3 + 1 + 1 + 1 + 2 + 1 + 1 = 10
    assert inp.embeds.shape == (2, 13, 64) and inp.mask[1].tolist() == [0] * 3 + [1] * 10
    assert inp.labels[0].tolist() == [IGNORE] * 10 + [10, 11, tok.eos_token_id]
    assert inp.labels[1].tolist() == [IGNORE] * 11 + [12, tok.eos_token_id]
    ids = lambda t: model.embed_tokens(torch.tensor(t))  # noqa: E731
    torch.testing.assert_close(inp.embeds[1, 3:6], ids([50, 51, 52]))  # head first, after the padding
    torch.testing.assert_close(inp.embeds[1, 6], emb[1, 0])
    torch.testing.assert_close(inp.embeds[1, 7:11], ids([77, tok.bos_token_id, 60, 61]))
    torch.testing.assert_close(inp.embeds[0, 0:3], ids([50, 51, 52]))


def test_loss_is_cross_entropy_over_text_and_eos(tiny_llm_factory) -> None:
    llm, tok = tiny_llm_factory()
    model = tiny_speech_llm(llm, tok).eval()
    emb, lens, targets = torch.randn(2, 3, 64), torch.tensor([3, 1]), [[10, 11], [12, 13, 14]]
    inp = model.build_inputs(emb, lens, targets)
    loss, n = model.token_loss(inp)
    assert n == 3 + 4
    # reference: the full causal LM with its own logits and a shifted cross-entropy
    logits = model.base_llm(inputs_embeds=inp.embeds, attention_mask=inp.mask, position_ids=inp.positions).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), inp.labels[:, 1:].reshape(-1),
                                            ignore_index=IGNORE)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
