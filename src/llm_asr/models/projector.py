"""Projectors from encoder frames to LLM input embeddings.

Both map `(enc [B,T,D] at 40 ms, enc_lens [B], ctc_logits [B,T,V]) -> (emb [B,N,H], lens [B])`:
- `linear` (the paper): stack n frames (`FrameStacker`), then one linear layer to the LLM
  hidden size H. N = ceil(T/n).
- `token_ctc` (the default; LegoSLM-style, arXiv 2505.11352): stack n frames, a small conformer,
  then CTC posteriors over the LLM's own tokens, scored against its frozen input-embedding table
  (cosine x a learned scale), so every frame points at the LLM tokens it spoke. The LLM reads each
  frame's posterior-weighted mix of those embeddings plus a learned residual of the frame (zero at
  init); with `compress`, blank-argmax frames are dropped and runs of one token merged (CTC
  compression, Gaido et al.), so N is about the number of LLM tokens spoken. Every step from the
  encoder frames to the LLM input is differentiable; only the frame selection is by argmax. The
  projector is first aligned alone (speech_llm.align: token-CTC, no LLM forward).
- `ctc_mix`: frames whose CTC argmax is blank are dropped and runs of the same non-blank
  argmax are merged (CTC collapse), so N is about the number of CTC pieces spoken. Each
  kept segment's embedding is the CTC-posterior-weighted mix of the LLM's own embeddings
  of the CTC pieces, plus a learned projection of the encoder state (initialised at zero).
  The LLM therefore starts by reading a noisy transcript in its own embedding space
  (DESIGN section 7) and learns to correct it; the stride does not apply.
  With `merge_space` (for character CTC vocabularies), word-boundary segments ("\u2581") are
  dropped and the first character of each word mixes the LLM embeddings of " " + piece
  (e.g. "\u0120f"), so the LLM reads words the way its tokenizer writes them, ~1/6 shorter.
- `ctc_words` (a cascade, ASR + LLM error correction, not the paper's method): the CTC greedy hypothesis (with `speech_llm.ctc_words_lm`: the CTC baseline's
  LM beam-search hypothesis, decoding/ctc.LmCtcDecoder) split into words; each word is written with the
  LLM's own tokenizer (" word") and embedded with the LLM's own (fixed) input embeddings,
  plus a learned projection of the word's mean encoder state (zero at init) on each of its
  tokens. N is the hypothesis length in LLM tokens (~2-4x shorter than characters), and
  the LLM reads text in the form it was pretrained on from step 0: it learns to correct the
  CTC's spelling and word boundaries, with the acoustic residual for what text cannot carry.
  The argmax is not differentiable, so the CTC decides the words; only the residual path
  reaches the encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llm_asr.models.stacker import ENCODER_FRAME_MS, FrameStacker


class LinearProjector(nn.Module):
    def __init__(self, enc_dim: int, llm_dim: int, stride_ms: int, frame_ms: int = ENCODER_FRAME_MS) -> None:
        super().__init__()
        self.stacker = FrameStacker(stride_ms, frame_ms)
        self.proj = nn.Linear(self.stacker.output_dim(enc_dim), llm_dim)

    def forward(
        self, enc: torch.Tensor, enc_lens: torch.Tensor, ctc_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stacked, lens = self.stacker(enc, enc_lens)  # [B, N, n*D]
        return self.proj(stacked), lens  # [B, N, H]


@torch.no_grad()
def piece_embeddings(pieces: list[str], blank: int, llm: nn.Module, llm_tokenizer: Any,
                     prefix: str = "") -> torch.Tensor:
    """[V, H]: the mean LLM input embedding of each CTC piece's text (after `prefix`, e.g. " "
    for word-initial characters); zeros for blank/specials."""
    table = llm.get_input_embeddings().weight.detach().float()
    out = torch.zeros(len(pieces), table.shape[1])
    for i, piece in enumerate(pieces):
        if i == blank or (piece.startswith("<") and piece.endswith(">")):
            continue
        text = piece.replace("\u2581", " ")
        text = text if text.startswith(" ") else prefix + text
        ids = llm_tokenizer(text, add_special_tokens=False).input_ids
        if ids:
            out[i] = table[ids].mean(0)
    return out


def outputs_per_frame(enc: torch.Tensor, ctc_logits: torch.Tensor) -> int:
    """k of an upsampled CTC head (models/encoder.CtcHead): CTC outputs per encoder frame."""
    return ctc_logits.shape[1] // max(enc.shape[1], 1)


def space_index(pieces: list[str]) -> int:
    """Index of the word-boundary piece ("\u2581") of a character vocabulary, -1 if none."""
    return pieces.index("\u2581") if "\u2581" in pieces else -1


def ctc_segments(keep: torch.Tensor, best: torch.Tensor, blank_post: torch.Tensor, valid: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CTC collapse over kept frames: (keep, start, seg, lens). `start` [B, T] marks a kept frame that
    opens a segment (a new argmax, or the first after a dropped frame), `seg` [B, T] each frame's
    segment index, `lens` [B] the segments per row. A row with no kept frame keeps its least-blank
    valid frame, so every row has N >= 1."""
    keep = keep.clone()
    empty = ~keep.any(1)
    if empty.any():
        least = blank_post.masked_fill(~valid, 2.0).argmin(1)  # [B]
        keep[empty, least[empty]] = True
    prev = torch.nn.functional.pad(best, (1, 0), value=-1)[:, :-1]
    prev_keep = torch.nn.functional.pad(keep, (1, 0), value=False)[:, :-1]
    start = keep & (~prev_keep | (best != prev))  # [B, T] a new segment begins
    seg = torch.cumsum(start.long(), 1) - 1  # [B, T] segment index of each frame
    return keep, start, seg, start.sum(1)


def segment_mean(frame: torch.Tensor, keep: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, H] frames -> [B, n, H]: the mean of each segment's kept frames (zeros past a row's end)."""
    b = frame.shape[0]
    flat = (torch.arange(b, device=frame.device)[:, None] * n + seg.clamp_min(0))[keep]  # [K]
    sums = torch.zeros(b * n, frame.shape[-1], device=frame.device).index_add(0, flat, frame[keep])
    counts = torch.zeros(b * n, device=frame.device).index_add(0, flat, torch.ones_like(flat, dtype=torch.float))
    return (sums / counts.clamp_min(1.0)[:, None]).reshape(b, n, -1)  # [B, n, H]


class CtcMixProjector(nn.Module):
    def __init__(self, enc_dim: int, llm_dim: int, pieces: torch.Tensor, blank: int,
                 word_start: torch.Tensor | None = None, space: int = -1) -> None:
        super().__init__()
        self.blank = blank
        self.register_buffer("pieces", pieces.clone())  # [V, H], fixed: the LLM's own embeddings
        self.merge_space = word_start is not None
        if self.merge_space:  # [V, H] the LLM embeddings of " " + piece; the boundary piece index
            self.register_buffer("word_start", word_start.clone())
            self.register_buffer("space", torch.tensor(space, dtype=torch.long))
        self.proj = nn.Linear(enc_dim, llm_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(
        self, enc: torch.Tensor, enc_lens: torch.Tensor, ctc_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert ctc_logits is not None, "ctc_mix needs the CTC head's logits"
        k = outputs_per_frame(enc, ctc_logits)
        if k > 1:  # an upsampled CTC head: k outputs per encoder frame share its state
            enc, enc_lens = enc.repeat_interleave(k, 1), enc_lens * k
        t = enc.shape[1]
        post = ctc_logits.float().softmax(-1)  # [B, T, V]
        best = post.argmax(-1)  # [B, T]
        valid = torch.arange(t, device=enc.device)[None, :] < enc_lens[:, None]
        keep = valid & (best != self.blank)
        if self.merge_space:
            is_space = valid & (best == self.space)
            keep = keep & ~is_space
        keep, start, seg, lens = ctc_segments(keep, best, post[..., self.blank], valid)
        nonblank = post.clone()
        nonblank[..., self.blank] = 0.0
        nonblank = nonblank / nonblank.sum(-1, keepdim=True).clamp_min(1e-6)  # [B, T, V]
        mix = nonblank @ self.pieces  # [B, T, H]
        if self.merge_space:
            mix = torch.where(self._word_start_frames(keep, start, seg, is_space)[..., None],
                              nonblank @ self.word_start, mix)
        frame = (self.gain * mix + self.proj(enc.float())).float()  # [B, T, H] (fp32 under autocast)
        emb = segment_mean(frame, keep, seg, int(lens.max()))  # [B, N, H]
        return emb.to(enc.dtype), lens

    @staticmethod
    def _word_start_frames(keep: torch.Tensor, start: torch.Tensor, seg: torch.Tensor,
                           is_space: torch.Tensor) -> torch.Tensor:
        """[B, T] bool: frames of a segment that follows a boundary (or opens the utterance)."""
        b, t = keep.shape
        pos = torch.arange(t, device=keep.device)[None, :].expand(b, t)
        last_kept = torch.cummax(torch.where(keep, pos, -1), 1).values  # [B, T]
        prev_kept = torch.nn.functional.pad(last_kept, (1, 0), value=-1)[:, :-1]  # strictly before t
        spaces = torch.cumsum(is_space.long(), 1)  # [B, T]
        since = spaces - spaces.gather(1, prev_kept.clamp_min(0))  # boundaries after the last kept frame
        opens = (prev_kept < 0) | (since > 0)  # [B, T]
        idx = seg.clamp_min(0)
        seg_flag = torch.zeros(b, t, dtype=torch.long, device=keep.device).scatter_reduce(
            1, idx, (opens & start & keep).long(), reduce="amax")  # [B, T] per segment: its first frame's flag
        return seg_flag.gather(1, idx).bool() & keep


class CtcWordsProjector(nn.Module):
    def __init__(self, enc_dim: int, llm_dim: int, pieces: list[str], blank: int, llm_tokenizer: Any,
                 embedding: nn.Module, decoder: Any = None) -> None:
        super().__init__()
        self.blank, self.pieces, self.tok = blank, list(pieces), llm_tokenizer
        # tuples, not submodules: the LLM's table is neither trained here nor saved in trained.pt, and
        # `decoder` (an LmCtcDecoder, optional) replaces the greedy words with LM beam-search words
        self._embedding = (embedding,)
        self._decoder = (decoder,) if decoder is not None else ()
        self.proj = nn.Linear(enc_dim, llm_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.gain = nn.Parameter(torch.ones(()))
        self._fallback = self.tok(" ", add_special_tokens=False).input_ids  # an empty hypothesis: one " " slot
        self._ids: dict[str, list[int]] = {"": self._fallback}

    def word_ids(self, word: str) -> list[int]:
        if word not in self._ids:
            if len(self._ids) >= 200_000:  # a long-lived server meets endless misspellings: stay bounded
                self._ids = {"": self._fallback}
            self._ids[word] = self.tok(" " + word, add_special_tokens=False).input_ids
        return self._ids[word]

    def words(self, best: list[int]) -> list[tuple[str, int, int]]:
        """(word, first CTC frame, end CTC frame) from the per-frame argmax of one utterance."""
        runs, prev = [], self.blank  # (class, first frame, end frame) of each non-blank run
        for t, c in enumerate(best):
            if c != self.blank and c == prev:
                runs[-1][2] = t + 1
            elif c != self.blank:
                runs.append([c, t, t + 1])
            prev = c
        return self._join(runs)

    def lm_words(self, hyp: Any, n_frames: int) -> list[tuple[str, int, int]]:
        """The same from an LM beam-search hypothesis (torchaudio CTCHypothesis): its tokens start at
        `timesteps`, which flashlight counts from a silence frame it puts before frame 0."""
        runs = [[int(c), min(max(int(ts) - 1, 0), n_frames - 1), min(max(int(ts), 1), n_frames)]
                for c, ts in zip(hyp.tokens.tolist(), hyp.timesteps.tolist())]
        return self._join(runs)

    def _join(self, runs: list[list[int]]) -> list[tuple[str, int, int]]:
        out: list[tuple[str, int, int]] = []
        word, start, end = "", -1, -1
        for c, first, stop in runs:
            piece = self.pieces[c]
            if piece.startswith("<") and piece.endswith(">"):  # <unk>
                continue
            if piece.startswith("\u2581") or start < 0:
                if word:
                    out.append((word, start, end))
                word, start = "", first
            word += piece.lstrip("\u2581")
            end = stop
        if word:
            out.append((word, start, end))
        return out

    def forward(
        self, enc: torch.Tensor, enc_lens: torch.Tensor, ctc_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert ctc_logits is not None, "ctc_words needs the CTC head's logits"
        b = enc.shape[0]
        k = outputs_per_frame(enc, ctc_logits)
        if self._decoder:  # the CTC baseline's LM beam search writes the words
            hyps = self._decoder[0].best(ctc_logits.float().log_softmax(-1), enc_lens * k)
            hyp_words = [self.lm_words(h, int(enc_lens[i]) * k) if h else [] for i, h in enumerate(hyps)]
        else:
            best = ctc_logits.argmax(-1).cpu()  # [B, T*k]
            hyp_words = [self.words(best[i, : int(enc_lens[i]) * k].tolist()) for i in range(b)]
        rows: list[tuple[list[int], list[int], list[int]]] = []
        for i in range(b):
            n_valid = int(enc_lens[i])
            ids, starts, ends = [], [], []
            for word, s, e in hyp_words[i]:
                w = self.word_ids(word)
                ids += w
                starts += [s // k] * len(w)
                ends += [(e - 1) // k + 1] * len(w)
            if not ids:
                ids, starts, ends = list(self._fallback), [0] * len(self._fallback), [n_valid] * len(self._fallback)
            rows.append((ids, starts, ends))
        n = max(len(r[0]) for r in rows)
        dev = enc.device
        tok = torch.zeros(b, n, dtype=torch.long)
        span = torch.zeros(2, b, n, dtype=torch.long)
        span[1] = 1
        for i, (ids, starts, ends) in enumerate(rows):
            tok[i, : len(ids)] = torch.tensor(ids)
            span[0, i, : len(ids)], span[1, i, : len(ids)] = torch.tensor(starts), torch.tensor(ends)
        lens = torch.tensor([len(r[0]) for r in rows], device=dev)
        tok, span = tok.to(dev), span.to(dev)
        csum = nn.functional.pad(enc.float().cumsum(1), (0, 0, 1, 0))  # [B, T+1, D]
        d = enc.shape[-1]
        hi = csum.gather(1, span[1][..., None].expand(b, n, d))
        lo = csum.gather(1, span[0][..., None].expand(b, n, d))
        mean = (hi - lo) / (span[1] - span[0]).clamp_min(1)[..., None].float()  # [B, N, D] per word
        with torch.no_grad():
            text = self._embedding[0](tok).float()  # [B, N, H] the LLM's own embeddings
        emb = (self.gain * text + self.proj(mean).float())
        emb = emb * (torch.arange(n, device=dev)[None, :] < lens[:, None])[..., None]
        return emb.to(enc.dtype), lens


def llm_token_vocab(texts: list[str], llm_tokenizer: Any) -> list[int]:
    """The LLM token ids the token_ctc projector can emit: every token of the train transcripts (as
    the LLM's tokenizer writes them for stage two) and of each character they use, sorted."""
    ids: set[int] = set()
    chars: set[str] = set()
    for text in texts:
        ids.update(llm_tokenizer(text, add_special_tokens=False).input_ids)
        chars.update(text)
    for ch in chars:
        for form in (ch, " " + ch):
            ids.update(llm_tokenizer(form, add_special_tokens=False).input_ids)
    return sorted(ids)


class TokenCtcProjector(nn.Module):
    """Stacked frames -> conformer -> CTC over K LLM tokens (class 0 = blank) -> LLM input embeddings."""

    def __init__(self, enc_dim: int, llm_dim: int, stride_ms: int, frame_ms: int, token_ids: torch.Tensor,
                 table: torch.Tensor, tcfg: Any) -> None:
        super().__init__()
        import torchaudio

        self.stacker = FrameStacker(stride_ms, frame_ms)
        self.compress = tcfg.compress
        self.register_buffer("token_ids", token_ids.clone().long())  # [K] LLM ids of classes 1..K
        self.register_buffer("table", table.clone().float())  # [K, H] the LLM's own (fixed) embeddings
        self.inp = nn.Linear(self.stacker.output_dim(enc_dim), tcfg.d_model)
        self.body = torchaudio.models.Conformer(
            input_dim=tcfg.d_model, num_heads=tcfg.num_heads, ffn_dim=4 * tcfg.d_model,
            num_layers=tcfg.num_layers, depthwise_conv_kernel_size=tcfg.kernel_size, dropout=tcfg.dropout,
        ) if tcfg.num_layers else None
        self.query = nn.Linear(tcfg.d_model, llm_dim)
        self.blank_logit = nn.Linear(tcfg.d_model, 1)
        self.logit_scale = nn.Parameter(torch.tensor(16.0).log())
        self.bias = nn.Parameter(torch.zeros(len(token_ids)))
        self.blank_emb = nn.Parameter(torch.zeros(llm_dim))  # what a blank frame reads as (compress off)
        self.residual = nn.Linear(llm_dim, llm_dim)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.gain = nn.Parameter(torch.ones(()))

    def token_logits(self, enc: torch.Tensor, enc_lens: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [B, N, 1+K] with blank first, lens [B], queries [B, N, H]); N = ceil(T / n).
        Always fp32, even under bf16 autocast: on the 2-core CPU the conformer's bf16 step (its
        depthwise conv) measured ~10x slower than fp32 (36 s vs 4 s for a 200 s batch)."""
        with torch.autocast(device_type=enc.device.type, enabled=False):
            x, lens = self.stacker(enc.float(), enc_lens)  # [B, N, n*D]
            x = self.inp(x)  # [B, N, d]
            if self.body is not None:
                x, _ = self.body(x, lens.clamp_min(1))  # [B, N, d]
            q = self.query(x)  # [B, N, H]
            keys = nn.functional.normalize(self.table, dim=-1)  # [K, H]
            tok = self.logit_scale.exp() * (nn.functional.normalize(q, dim=-1) @ keys.T) + self.bias  # [B, N, K]
            return torch.cat([self.blank_logit(x), tok], -1), lens, q

    def forward_all(self, enc: torch.Tensor, enc_lens: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(LLM embeddings [B, N', H], their lens, token logits [B, N, 1+K], logit lens)."""
        logits, lens, q = self.token_logits(enc, enc_lens)
        post = logits.softmax(-1)  # [B, N, 1+K]
        valid = torch.arange(logits.shape[1], device=enc.device)[None, :] < lens[:, None]  # [B, N]
        if not self.compress:
            mix = post[..., 1:] @ self.table + post[..., :1] * self.blank_emb  # [B, N, H]
            frame = (self.gain * mix + self.residual(q).float()) * valid[..., None]
            return frame.to(enc.dtype), lens, logits, lens
        nonblank = post[..., 1:] / post[..., 1:].sum(-1, keepdim=True).clamp_min(1e-6)  # [B, N, K]
        frame = self.gain * (nonblank @ self.table) + self.residual(q).float()  # [B, N, H]
        best = logits.argmax(-1)  # [B, N]
        keep, _, seg, emb_lens = ctc_segments(valid & (best != 0), best, post[..., 0], valid)
        return segment_mean(frame, keep, seg, int(emb_lens.max())).to(enc.dtype), emb_lens, logits, lens

    def forward(self, enc: torch.Tensor, enc_lens: torch.Tensor, ctc_logits: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        emb, lens, _, _ = self.forward_all(enc, enc_lens)
        return emb, lens


def build_projector(kind: str, enc_dim: int, llm_dim: int, stride_ms: int, frame_ms: int = ENCODER_FRAME_MS,
                    **ctc: Any) -> nn.Module:
    if kind == "linear":
        return LinearProjector(enc_dim, llm_dim, stride_ms, frame_ms)
    if kind == "token_ctc":
        return TokenCtcProjector(enc_dim, llm_dim, stride_ms, frame_ms, ctc["token_ids"], ctc["table"],
                                 ctc["token_ctc"])
    if kind == "ctc_mix":
        return CtcMixProjector(enc_dim, llm_dim, ctc["pieces"], ctc["blank"], ctc.get("word_start"),
                               ctc.get("space", -1))
    if kind == "ctc_words":
        return CtcWordsProjector(enc_dim, llm_dim, ctc["piece_texts"], ctc["blank"], ctc["llm_tokenizer"],
                                 ctc["embedding"], ctc.get("lm_decoder"))
    raise ValueError(f"unknown projector '{kind}'")
