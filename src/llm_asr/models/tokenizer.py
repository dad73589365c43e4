"""CTC tokenizer: a sentencepiece model over the train transcripts of all languages.

CTC class ids are sentencepiece ids shifted by one: class 0 is the CTC blank, class
i + 1 is piece i. `pieces` lists the text of every class ("<blank>" first), which the
speech-LLM's ctc_mix projector maps to LLM embeddings.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from llm_asr.config import TokenizerConfig
from llm_asr.errors import UserError

BLANK = 0


class CtcTokenizer:
    def __init__(self, model_file: str | Path):
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise UserError(f"no tokenizer at {self.model_file}: run `llm-asr train-ctc` first")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        self.blank = BLANK

    @property
    def num_classes(self) -> int:
        return self.sp.get_piece_size() + 1

    @property
    def pieces(self) -> list[str]:
        return ["<blank>"] + [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self.sp.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) - 1 for i in ids if int(i) != BLANK])


def train_tokenizer(texts: Iterable[str], tcfg: TokenizerConfig, out_file: Path) -> CtcTokenizer:
    """Train sentencepiece on `texts` and write `out_file` (the .model). Deterministic for a corpus."""
    sentences = [t for t in texts if t.strip()]
    if not sentences:
        raise UserError("no transcripts to train the tokenizer on: is the train split empty?")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=tcfg.vocab_size,
        model_type=tcfg.model_type,
        character_coverage=1.0,  # keep every letter of all 8 languages (texts are normalized)
        hard_vocab_limit=False,  # tiny (micro) corpora cannot fill a large vocabulary
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(model.getvalue())
    return CtcTokenizer(out_file)
