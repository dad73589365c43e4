"""CTC prefix scores for joint CTC/LLM decoding (hybrid CTC/attention decoding, Watanabe et al. 2017).

The `token_ctc` projector's CTC head (models/projector.py) emits posteriors over the LLM's own
tokens, so every LLM hypothesis prefix has a CTC probability: the total probability of all frame
alignments whose collapse starts with that prefix (or, for a finished hypothesis, equals it).
Decoding with `decoding.ctc_weight` = lambda scores each candidate token by
`(1 - lambda) * log p_llm(token | prefix) + lambda * (log ctc(prefix + token) - log ctc(prefix))`,
so the LLM's language knowledge fixes the CTC's spelling while the CTC vetoes what the audio does
not contain (paraphrases, dropped words, loops, early stops).

State per hypothesis: the forward variables r[t, 0] (prefix ends at frame t in a non-blank) and
r[t, 1] (ends in blank), log domain, plus the prefix's last CTC class. Only the LLM's top
candidates are scored each step (`candidates`), as in ESPnet's partial scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG = float("-inf")
EMPTY, DEAD = -1, -2


@dataclass
class CtcPrefixState:
    r: torch.Tensor  # [R, T, 2] log forward variables of each hypothesis' prefix
    last: torch.Tensor  # [R] the prefix's last CTC class (EMPTY: none yet; DEAD: it holds a token the CTC cannot emit)
    score: torch.Tensor  # [R] log CTC prefix probability of the prefix


class CtcPrefixScorer:
    """Prefix scores over CTC log posteriors `logp` [B, T, C] (class 0 = blank) with lengths `lens`.
    `token_class` [V] maps an LLM token id to its CTC class (-1: a token the CTC cannot emit)."""

    def __init__(self, logp: torch.Tensor, lens: torch.Tensor, token_class: torch.Tensor) -> None:
        b, t, _ = logp.shape
        valid = torch.arange(t, device=logp.device)[None, :] < lens[:, None]  # [B, T]
        self.logp = logp.float().masked_fill(~valid[..., None], NEG)  # nothing is emitted past the end
        self.last_frame = (lens - 1).clamp_min(0)  # [B]
        self.token_class = token_class

    def expand(self, k: int) -> None:
        """Repeat every row k times (beam search's B*K hypotheses)."""
        self.logp = self.logp.repeat_interleave(k, 0)
        self.last_frame = self.last_frame.repeat_interleave(k, 0)

    def initial(self) -> CtcPrefixState:
        r = torch.full((*self.logp.shape[:2], 2), NEG, device=self.logp.device)
        r[..., 1] = self.logp[..., 0].cumsum(1)  # the empty prefix: blanks only
        rows = self.logp.shape[0]
        return CtcPrefixState(r, torch.full((rows,), EMPTY, dtype=torch.long, device=r.device),
                              torch.zeros(rows, device=r.device))

    def extend(self, state: CtcPrefixState, tokens: torch.Tensor, eos_id: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix scores of each row's prefix + each candidate LLM token `tokens` [R, N]:
        (scores [R, N] log CTC probability, r [R, N, T, 2] their forward variables). EOS scores the
        prefix as a complete transcript; a token the CTC cannot emit scores -inf."""
        logp, r_prev = self.logp, state.r
        rows, t_max = logp.shape[:2]
        cls = self.token_class[tokens]  # [R, N]
        emittable = cls >= 0
        x = logp.gather(2, cls.clamp_min(0)[:, None, :].expand(rows, t_max, cls.shape[1]))  # [R, T, N]
        x = x.masked_fill(~emittable[:, None, :], NEG)
        blank = logp[..., 0]  # [R, T]
        total = torch.logaddexp(r_prev[..., 0], r_prev[..., 1])  # [R, T]
        # phi: probability of the prefix before a new emission of c (a repeat needs a blank between)
        same = (cls == state.last[:, None])[:, None, :]  # [R, 1, N]
        phi = torch.where(same, r_prev[..., 1][..., None], total[..., None])  # [R, T, N]
        r = torch.full((rows, cls.shape[1], t_max, 2), NEG, device=logp.device)
        start = state.last == EMPTY  # the empty prefix: the token may be emitted at frame 0
        r[:, :, 0, 0] = torch.where(start[:, None], x[:, 0], torch.full_like(x[:, 0], NEG))
        for t in range(1, t_max):
            r[:, :, t, 0] = torch.logaddexp(r[:, :, t - 1, 0], phi[:, t - 1]) + x[:, t]
            r[:, :, t, 1] = torch.logaddexp(r[:, :, t - 1, 0], r[:, :, t - 1, 1]) + blank[:, t, None]
        # psi: the prefix emitted c first at some frame t (summed over t), anything may follow
        psi = torch.logsumexp(torch.cat([r[:, :, :1, 0], (phi[:, :-1] + x[:, 1:]).transpose(1, 2)], 2), 2)
        final = total.gather(1, self.last_frame[:, None])  # [R, 1] the prefix as a whole transcript
        scores = torch.where(tokens == eos_id, final.expand_as(psi), psi)
        return scores, r

    @staticmethod
    def select(state: CtcPrefixState, rows: torch.Tensor, picks: torch.Tensor, grow: torch.Tensor,
               classes: torch.Tensor, scores: torch.Tensor, r: torch.Tensor) -> CtcPrefixState:
        """The state of the hypotheses built from source rows `rows` [R'] and candidate columns
        `picks` [R'] (their CTC classes `classes` [R'], prefix scores `scores` [R']). Where `grow` is
        false (a finished hypothesis, or one that took EOS) the source's state is kept."""
        keep = grow[:, None, None]
        classes = torch.where(classes >= 0, classes, torch.full_like(classes, DEAD))  # r is all -inf then
        return CtcPrefixState(torch.where(keep, r[rows, picks], state.r[rows]),
                              torch.where(grow, classes, state.last[rows]),
                              torch.where(grow, scores, state.score[rows]))

def score_gain(prefix: torch.Tensor, state: CtcPrefixState, floor: float = -1e4) -> torch.Tensor:
    """log ctc(prefix + token) - log ctc(prefix) [R, N], at least `floor`: an impossible extension
    (or any extension of an already impossible prefix) costs `floor`, never -inf or NaN, so such
    hypotheses rank below every possible one and the search still ends (by EOS or the budget)."""
    alive = torch.isfinite(state.score)[:, None]
    gain = torch.where(alive, prefix - state.score[:, None], torch.full_like(prefix, floor))
    return gain.nan_to_num(nan=floor, neginf=floor).clamp(floor, 0.0)


def token_classes(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[V] LLM token id -> CTC class of the token_ctc head (its class k >= 1 is token_ids[k - 1]), -1 else."""
    out = torch.full((vocab_size,), -1, dtype=torch.long, device=token_ids.device)
    out[token_ids.long()] = torch.arange(1, len(token_ids) + 1, device=token_ids.device)
    return out
