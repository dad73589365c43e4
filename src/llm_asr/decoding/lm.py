"""Word n-gram language model for CTC beam search: interpolated Kneser-Ney, written as ARPA.

`train_arpa(sentences, order, out)` estimates the model the way KenLM's `lmplz` does
(adjusted counts: raw counts at the highest order and for n-grams that start with <s>,
continuation counts below; one discount per order, D = n1 / (n1 + 2 n2)) and writes a standard
ARPA file, which flashlight-text's KenLM loads for `torchaudio.models.decoder.ctc_decoder`.
`ArpaModel` reads an ARPA file back and scores words in Python (tests, inspection).
`write_lexicon` spells every LM word with the CTC tokenizer's pieces for the lexicon decoder.

No KenLM binary (`lmplz`) is installable offline here, and ~2M words of text take seconds in
Python, so the estimator lives here, tested against the normalization every ARPA must satisfy.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LOG10 = math.log(10)


def _ngrams(sentences: Iterable[str], order: int) -> list[Counter]:
    """Raw counts per order (index n-1), every n-gram that ends in a predicted word (not <s>)."""
    counts = [Counter() for _ in range(order)]
    for sent in sentences:
        words = [BOS] + sent.split() + [EOS]
        for i in range(1, len(words)):
            for n in range(1, order + 1):
                if i - n + 1 < 0:
                    break
                counts[n - 1][tuple(words[i - n + 1 : i + 1])] += 1
    return counts


def _adjusted(raw: list[Counter]) -> list[Counter]:
    """KenLM's adjusted counts: continuation counts N1+(. g) below the top order, except for
    n-grams that start with <s> (nothing precedes them), which keep their raw counts."""
    order = len(raw)
    adj = [Counter() for _ in range(order)]
    adj[-1] = Counter(raw[-1])
    for n in range(order - 1, 0, -1):  # continuation counts of order n from the (n+1)-grams
        for g in raw[n]:
            if g[1] != BOS:
                adj[n - 1][g[1:]] += 1
        for g, c in raw[n - 1].items():
            if g[0] == BOS:
                adj[n - 1][g] = c
    return adj


def _discount(counts: Counter) -> float:
    coc = Counter(c for c in counts.values() if c <= 2)
    n1, n2 = coc.get(1, 0), coc.get(2, 0)
    return min(max(n1 / (n1 + 2 * n2), 0.1), 0.9) if n1 + n2 else 0.5


def estimate(sentences: Iterable[str], order: int = 3) -> tuple[list[dict], list[dict], list[float]]:
    """(probs, backoffs, discounts): probs[n-1][ngram] = p(w | h) (interpolated KN, natural
    probabilities), backoffs[n-1][ngram] = the weight applied when ngram is a context."""
    raw = _ngrams(sentences, order)
    if not raw[0]:
        raise ValueError("no words to train a language model on")
    adj = _adjusted(raw)
    discounts = [_discount(a) for a in adj]
    probs: list[dict] = [dict() for _ in range(order)]
    backoffs: list[dict] = [dict() for _ in range(order)]

    d = discounts[0]
    vocab = {g for g in adj[0]} | {(EOS,), (UNK,)}
    total = sum(adj[0].values())
    types = sum(1 for c in adj[0].values() if c > 0)
    uniform = d * types / total / len(vocab)  # the discounted mass, spread over the vocabulary
    for g in vocab:
        probs[0][g] = max(adj[0].get(g, 0) - d, 0) / total + uniform

    for n in range(2, order + 1):
        d = discounts[n - 1]
        by_ctx: dict[tuple, list[tuple[str, int]]] = defaultdict(list)
        for g, c in adj[n - 1].items():
            by_ctx[g[:-1]].append((g[-1], c))
        for ctx, follows in by_ctx.items():
            denom = sum(c for _, c in follows)
            gamma = d * len(follows) / denom
            for w, c in follows:
                lower = probs[n - 2][ctx[1:] + (w,)]  # seen: every suffix of a seen n-gram was counted
                probs[n - 1][ctx + (w,)] = max(c - d, 0) / denom + gamma * lower
            backoffs[n - 2][ctx] = gamma
    return probs, backoffs, discounts


def write_arpa(probs: list[dict], backoffs: list[dict], out: Path) -> dict[str, int]:
    """The standard ARPA text format (log10 probabilities and back-off weights)."""
    order = len(probs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = [len(probs[0]) + 1] + [len(p) for p in probs[1:]]  # + <s>
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for n, size in enumerate(sizes, 1):
            f.write(f"ngram {n}={size}\n")
        for n in range(1, order + 1):
            f.write(f"\n\\{n}-grams:\n")
            table = probs[n - 1]
            if n == 1:
                bow = backoffs[0].get((BOS,))
                f.write(f"-99\t{BOS}" + (f"\t{math.log10(bow):.6f}" if bow else "") + "\n")
            for g in sorted(table):
                line = f"{math.log10(table[g]):.6f}\t{' '.join(g)}"
                bow = backoffs[n - 1].get(g) if n < order else None
                f.write(line + (f"\t{math.log10(bow):.6f}" if bow else "") + "\n")
        f.write("\n\\end\\\n")
    tmp.replace(out)
    return {f"ngrams_{n}": size for n, size in enumerate(sizes, 1)}


def train_arpa(sentences: Iterable[str], order: int, out: Path) -> dict[str, float]:
    """Estimate an interpolated Kneser-Ney model of `order` on `sentences`; write it to `out`."""
    sentences = [s for s in (" ".join(s.split()) for s in sentences) if s]
    probs, backoffs, discounts = estimate(sentences, order)
    stats: dict[str, float] = write_arpa(probs, backoffs, out)
    stats["lm_sentences"] = len(sentences)
    stats["lm_words"] = sum(len(s.split()) for s in sentences)
    stats.update({f"discount_{n}": round(d, 4) for n, d in enumerate(discounts, 1)})
    return stats


class ArpaModel:
    """Reads an ARPA file; `logprob(word, history)` (natural log) with back-off, like KenLM."""

    def __init__(self, path: Path):
        self.prob: dict[tuple, float] = {}
        self.bow: dict[tuple, float] = {}
        order = 0
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.startswith("\\") and line.endswith("-grams:"):
                order = int(line[1:].split("-")[0])
                continue
            parts = line.split("\t")
            if order == 0 or len(parts) < 2:
                continue
            g = tuple(parts[1].split())
            self.prob[g] = float(parts[0]) * LOG10
            if len(parts) > 2:
                self.bow[g] = float(parts[2]) * LOG10
        self.order = order
        self.vocab = {g[0] for g in self.prob if len(g) == 1}

    def logprob(self, word: str, history: tuple[str, ...] = ()) -> float:
        word = word if word in self.vocab else UNK
        history = tuple(history)[-(self.order - 1):] if self.order > 1 else ()
        penalty = 0.0
        while True:
            g = history + (word,)
            if g in self.prob:
                return penalty + self.prob[g]
            penalty += self.bow.get(history, 0.0)
            history = history[1:]

    def sentence_logprob(self, sentence: str) -> float:
        words, hist, total = sentence.split() + [EOS], (BOS,), 0.0
        for w in words:
            total += self.logprob(w, hist)
            hist = hist + (w,)
        return total


def write_lexicon(words: Iterable[str], spell, out: Path) -> dict[str, int]:
    """`word<TAB>p1 p2 ...` per word; `spell(word)` gives its CTC pieces or None when the
    tokenizer cannot write it (a letter it never saw): such words are skipped and counted."""
    kept = skipped = 0
    out = Path(out)
    with out.open("w", encoding="utf-8") as f:
        for w in sorted(set(words)):
            pieces = spell(w)
            if not pieces:
                skipped += 1
                continue
            f.write(f"{w}\t{' '.join(pieces)}\n")
            kept += 1
    return {"lexicon_words": kept, "lexicon_skipped_words": skipped}
