"""Batched greedy and beam-search decoding of a `SpeechLlm`, with a KV cache and left padding.

Every row carries its own token budget (`max_new_tokens`, derived from its audio duration by
`token_budget`), and a loop guard: a row whose output ends in the same n-gram repeated
`max_repeat_run` times is stopped and the repeats are cut to one. Repetition penalty and
no-repeat n-gram come from transformers' logits processors. Because position ids count
real tokens only and padding is masked, a row decodes the same in a batch as alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_asr.decoding.ctc_prefix import CtcPrefixScorer, score_gain
from llm_asr.models.speech_llm import LlmInputs, SpeechLlm

MAX_LOOP_NGRAM = 8


@dataclass(frozen=True)
class GenerationSettings:
    beam_size: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_repeat_run: int = 4  # 0 disables the loop guard
    use_cache: bool = True
    ctc_weight: float = 0.0  # joint CTC/LLM decoding (decoding/ctc_prefix.py); 0 = the LLM alone
    ctc_candidates: int = 8  # LLM tokens per hypothesis scored by the CTC each step (plus EOS)


def token_budget(durations_s: list[float], tokens_per_second: float, minimum: int) -> list[int]:
    return [max(minimum, int(d * tokens_per_second + 0.999)) for d in durations_s]


def loop_cut(tokens: list[int], max_run: int, max_ngram: int = MAX_LOOP_NGRAM) -> int | None:
    """Length to keep if `tokens` ends in an n-gram repeated `max_run` times in a row, else None."""
    for n in range(1, max_ngram + 1):
        if len(tokens) < n * max_run:
            break
        gram = tokens[-n:]
        if all(tokens[-(k + 1) * n : len(tokens) - k * n] == gram for k in range(1, max_run)):
            return len(tokens) - (max_run - 1) * n
    return None


class _Stepper:
    """Runs the LLM one step at a time, with or without a KV cache."""

    def __init__(self, model: SpeechLlm, inp: LlmInputs, use_cache: bool) -> None:
        from transformers import DynamicCache

        self.model, self.use_cache = model, use_cache
        self.embeds, self.mask, self.positions = inp.embeds, inp.mask, inp.positions
        self.cache = DynamicCache() if use_cache else None
        self.slot = torch.arange(inp.embeds.shape[0], device=inp.embeds.device)  # hypothesis -> row here (-1: gone)

    def first(self) -> torch.Tensor:
        return self._run(self.embeds, self.mask, self.positions)

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [R] -> logits [R, V] for the following position."""
        new = self.model.embed_tokens(tokens)[:, None, :].to(self.embeds.dtype)  # [R, 1, H]
        pos = self.positions[:, -1:] + 1  # [R, 1]
        self.mask = torch.cat([self.mask, torch.ones_like(pos)], 1)
        self.positions = torch.cat([self.positions, pos], 1)
        if self.use_cache:
            return self._run(new, self.mask, pos)
        self.embeds = torch.cat([self.embeds, new], 1)
        return self._run(self.embeds, self.mask, self.positions)

    def reorder(self, index: torch.Tensor) -> None:
        self.mask, self.positions = self.mask[index], self.positions[index]
        if self.use_cache:
            self.cache.reorder_cache(index)
        else:
            self.embeds = self.embeds[index]

    def advance(self, src: torch.Tensor, tokens: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """One search step: hypothesis i continues hypothesis src[i] with tokens[i]. Only the `live`
        (unfinished) ones run the LLM: a finished hypothesis never reads its logits again, so its row
        leaves the batch and the KV cache for good (its logits are zeros). Returns logits [len(src), V]."""
        rows = live.nonzero().flatten()
        self.reorder(self.slot[src[rows]])
        part = self.next(tokens[rows])
        self.slot = torch.full_like(src, -1)
        self.slot[rows] = torch.arange(len(rows), device=src.device)
        out = part.new_zeros(len(src), part.shape[1])
        out[rows] = part
        return out

    def expand(self, k: int) -> None:
        self.slot = torch.arange(self.mask.shape[0] * k, device=self.mask.device)
        index = torch.arange(self.mask.shape[0]).repeat_interleave(k)
        self.mask, self.positions, self.embeds = self.mask[index], self.positions[index], self.embeds[index]
        if self.use_cache:
            self.cache.batch_repeat_interleave(k)

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model.base_llm.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
            cache=self.cache, use_cache=self.use_cache,
        )
        return self.model.lm_head(out.last_hidden_state[:, -1]).float()  # [R, V]


def _processors(s: GenerationSettings) -> list:
    from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    procs = []
    if s.repetition_penalty > 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    if s.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramLogitsProcessor(s.no_repeat_ngram_size))
    return procs


def _process(procs: list, history: torch.Tensor, logits: torch.Tensor, pad_id: int) -> torch.Tensor:
    logits = logits.clone()
    logits[:, pad_id] = float("-inf")  # pad marks finished rows, so it is never a real output
    if history.shape[1] == 0:
        return logits
    for p in procs:
        logits = p(history, logits)
    return logits


@torch.no_grad()
def generate(model: SpeechLlm, inp: LlmInputs, max_new: list[int], s: GenerationSettings,
             ctc: CtcPrefixScorer | None = None) -> list[list[int]]:
    """Token ids per row (no EOS), greedy when beam_size == 1; joint with the CTC prefix scores of
    `ctc` when `s.ctc_weight` > 0 (beam_size 1 is then greedy in the joint score)."""
    if s.ctc_weight > 0:
        if ctc is None:
            raise ValueError("ctc_weight > 0 needs the CTC prefix scorer of the token_ctc head")
        return _joint(model, inp, max_new, s, ctc)
    if s.beam_size > 1:
        return _beam(model, inp, max_new, s)
    return _greedy(model, inp, max_new, s)


def _greedy(model: SpeechLlm, inp: LlmInputs, max_new: list[int], s: GenerationSettings) -> list[list[int]]:
    b = inp.embeds.shape[0]
    step, procs = _Stepper(model, inp, s.use_cache), _processors(s)
    out: list[list[int]] = [[] for _ in range(b)]
    done = [m <= 0 for m in max_new]
    history = torch.zeros(b, 0, dtype=torch.long, device=inp.embeds.device)
    logits = step.first()
    for t in range(max(max_new)):
        nxt = _process(procs, history, logits, model.pad_id).argmax(-1)  # [B]
        for i in range(b):
            if done[i]:
                continue
            tok = int(nxt[i])
            if tok == model.eos_id:
                done[i] = True
                continue
            out[i].append(tok)
            cut = loop_cut(out[i], s.max_repeat_run) if s.max_repeat_run else None
            if cut is not None:
                out[i], done[i] = out[i][:cut], True
            elif len(out[i]) >= max_new[i]:
                done[i] = True
        if all(done):
            break
        finished = torch.tensor(done, device=nxt.device)
        nxt = torch.where(finished, torch.full_like(nxt, model.pad_id), nxt)
        history = torch.cat([history, nxt[:, None]], 1)
        logits = step.advance(torch.arange(b, device=nxt.device), nxt, ~finished)
    return out


def _finish(history: torch.Tensor, length: torch.Tensor, scores: torch.Tensor, pad_id: int) -> list[list[int]]:
    """The best length-normalised hypothesis of each row's K (history [B*K, L], scores [B, K])."""
    b, k = scores.shape
    norm = scores.reshape(-1) / (length + 1).float()  # length-normalised log-probability
    best = norm.reshape(b, k).argmax(1)
    out = []
    for i in range(b):
        r = i * k + int(best[i])
        seq = history[r, history[r] != pad_id].tolist()
        out.append(seq[: int(length[r])])
    return out


def _advance(top: torch.Tensor, src: torch.Tensor, token: torch.Tensor, done: torch.Tensor, length: torch.Tensor,
             history: torch.Tensor, model: SpeechLlm) -> tuple[torch.Tensor, ...]:
    """One beam step's bookkeeping: hypotheses from source rows `src` [B*K] took `token` [B*K] with
    scores `top` [B, K]. Returns (scores, done, length, history, token, grow): `grow` marks the rows
    that added a real token; EOS finishes a row, and finished rows emit pad."""
    done, length, history = done[src], length[src], history[src]
    newly = ~done & (token == model.eos_id)
    grow = ~done & ~newly
    token = torch.where(grow, token, torch.full_like(token, model.pad_id))
    return top, done | newly, length + grow.long(), torch.cat([history, token[:, None]], 1), token, grow


def _loop_guard(history: torch.Tensor, grow: torch.Tensor, done: torch.Tensor, length: torch.Tensor,
                s: GenerationSettings, pad_id: int) -> None:
    """Stop (in place) each growing hypothesis whose output now ends in a loop, keeping one repeat."""
    if not s.max_repeat_run:
        return
    for r in grow.nonzero().flatten().tolist():
        cut = loop_cut(history[r, history[r] != pad_id].tolist(), s.max_repeat_run)
        if cut is not None:
            done[r], length[r] = True, cut


def _joint(model: SpeechLlm, inp: LlmInputs, max_new: list[int], s: GenerationSettings,
           ctc: CtcPrefixScorer) -> list[list[int]]:
    """Beam search (K = beam_size, 1 = greedy) in the joint score (1 - w) log p_llm + w log p_ctc-prefix.
    Each step scores the LLM's top `ctc_candidates` (at least 2K) tokens and EOS of every hypothesis with the CTC."""
    b, k, dev, w = inp.embeds.shape[0], s.beam_size, inp.embeds.device, s.ctc_weight
    step, procs = _Stepper(model, inp, s.use_cache), _processors(s)
    logits = step.first().repeat_interleave(k, 0)  # [B*K, V]
    step.expand(k)
    ctc.expand(k)
    state = ctc.initial()
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    history = torch.zeros(b * k, 0, dtype=torch.long, device=dev)
    done = torch.zeros(b * k, dtype=torch.bool, device=dev)
    length = torch.zeros(b * k, dtype=torch.long, device=dev)
    budget = torch.tensor(max_new, device=dev).repeat_interleave(k)
    n = min(max(s.ctc_candidates, 2 * k), logits.shape[1])  # at least 2K: K live extensions must exist
    for t in range(max(max_new)):
        logp = _process(procs, history, logits, model.pad_id).log_softmax(-1)  # [B*K, V]
        top_lp, top_tok = logp.topk(n, -1)  # [B*K, n]
        top_lp = top_lp.masked_fill(top_tok == model.eos_id, float("-inf"))  # EOS has its own column
        tok = torch.cat([top_tok, torch.full_like(top_tok[:, :1], model.eos_id)], 1)  # [B*K, n+1]
        lp = torch.cat([top_lp, logp[:, model.eos_id, None]], 1)
        prefix, r = ctc.extend(state, tok, model.eos_id)  # [B*K, n+1]
        joint = (1 - w) * lp + w * score_gain(prefix, state)
        force_eos = ~done & (t >= budget)
        joint[force_eos] = float("-inf")
        joint[force_eos, -1] = 0.0
        joint[done] = float("-inf")
        joint[done, -1] = 0.0  # finished: one continuation (emitted as pad), score unchanged
        width = joint.shape[1]
        top, idx = (scores.reshape(-1, 1) + joint).reshape(b, -1).topk(k, dim=1)  # [B, K]
        src = (idx // width + torch.arange(b, device=dev)[:, None] * k).reshape(-1)  # [B*K]
        col = (idx % width).reshape(-1)
        scores, done, length, history, token, grow = _advance(top, src, tok[src, col], done, length, history, model)
        state = CtcPrefixScorer.select(state, src, col, grow, ctc.token_class[token], prefix[src, col], r)
        _loop_guard(history, grow, done, length, s, model.pad_id)
        if bool(done.all()):
            break
        logits = step.advance(src, token, ~done)
    return _finish(history, length, scores, model.pad_id)


def _beam(model: SpeechLlm, inp: LlmInputs, max_new: list[int], s: GenerationSettings) -> list[list[int]]:
    """Beam search over B x K hypotheses; a finished hypothesis keeps its score and emits pad."""
    b, k, dev = inp.embeds.shape[0], s.beam_size, inp.embeds.device
    step, procs = _Stepper(model, inp, s.use_cache), _processors(s)
    logits = step.first().repeat_interleave(k, 0)  # [B*K, V]
    step.expand(k)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: only one may expand at first
    history = torch.zeros(b * k, 0, dtype=torch.long, device=dev)
    done = torch.zeros(b * k, dtype=torch.bool, device=dev)
    length = torch.zeros(b * k, dtype=torch.long, device=dev)  # kept tokens (EOS and loop tail excluded)
    budget = torch.tensor(max_new, device=dev).repeat_interleave(k)
    for t in range(max(max_new)):
        logp = _process(procs, history, logits, model.pad_id).log_softmax(-1)  # [B*K, V]
        force_eos = ~done & (t >= budget)
        logp[force_eos] = float("-inf")
        logp[force_eos, model.eos_id] = 0.0
        logp[done] = float("-inf")
        logp[done, model.pad_id] = 0.0  # finished: one continuation, score unchanged
        cand = (scores.reshape(-1, 1) + logp).reshape(b, -1)  # [B, K*V]
        top, idx = cand.topk(k, dim=1)  # [B, K]
        vocab = logp.shape[1]
        src = (idx // vocab + torch.arange(b, device=dev)[:, None] * k).reshape(-1)  # [B*K]
        tok = (idx % vocab).reshape(-1)  # [B*K]
        scores, done, length, history, tok, grow = _advance(top, src, tok, done, length, history, model)
        _loop_guard(history, grow, done, length, s, model.pad_id)
        if bool(done.all()):
            break
        logits = step.advance(src, tok, ~done)
    return _finish(history, length, scores, model.pad_id)
