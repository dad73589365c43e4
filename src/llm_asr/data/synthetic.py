"""Synthetic MLS: LibreOffice help sentences spoken by espeak-ng voices, in the exact MLS layout.

A speaker is one espeak-ng voice configuration (variant, rate in words/min, pitch).
Train, dev and test use pairwise disjoint variants across all languages (`split_variants`): a test
voice is unseen in every language's train and dev, as MLS keeps speakers disjoint.
Speaker ids are `<language index><3 digits>` (1000.. english, 2000.. german, ...) so
ids are unique across languages; a speaker's utterances are grouped into books of 50.
Everything is a pure function of the seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from llm_asr.config import LANGUAGES, Config
from llm_asr.data.audio import SAMPLE_RATE, resample
from llm_asr.data.parallel import num_workers, process_pool
from llm_asr.data.text import normalize_transcript, sentences_for_all, source_package
from llm_asr.errors import UserError

ESPEAK_VOICE = {
    "english": "en-us", "german": "de", "dutch": "nl", "french": "fr-fr",
    "spanish": "es", "italian": "it", "portuguese": "pt", "polish": "pl",
}  # fmt: skip
# intelligible espeak-ng variants, named exactly as their files in espeak-ng-data/voices/!v (an unknown
# name such as "andy" for "Andy" silently falls back to the default voice); gender from the file
# (no "gender" line = espeak's default, male). No whisper/croak/robots/announcers.
VARIANTS = (
    ("m1", "M"), ("m2", "M"), ("m3", "M"), ("m4", "M"), ("m5", "M"), ("m6", "M"), ("m7", "M"),
    ("m8", "M"), ("klatt", "M"), ("klatt2", "M"), ("klatt3", "M"), ("klatt4", "M"), ("adam", "M"),
    ("Andy", "M"), ("david", "M"), ("edward", "M"), ("max", "M"), ("Michael", "M"), ("paul", "M"),
    ("robert", "M"), ("antonio", "M"), ("benjamin", "M"), ("caleb", "M"), ("gustave", "M"),
    ("michel", "M"), ("miguel", "M"), ("pablo", "M"), ("pedro", "M"), ("norbert", "M"),
    ("travis", "M"), ("victor", "M"), ("sandro", "M"), ("iven", "M"), ("john", "M"), ("rob", "M"),
    ("ed", "M"), ("boris", "M"),
    ("f1", "F"), ("f2", "F"), ("f3", "F"), ("f4", "F"), ("f5", "F"), ("Annie", "F"), ("belinda", "F"),
    ("linda", "F"), ("steph", "F"), ("aunty", "F"), ("grandma", "F"), ("Alicia", "F"), ("Andrea", "F"),
    ("anika", "F"),
)  # fmt: skip
# variants held out for each evaluation split, across all languages: a test variant is never heard in
# train or dev in any language, a dev variant never in train; each language draws its speakers from them
EVAL_POOL = 8
ESPEAK_RATE = 22050
BOOK_SIZE = 50
SPLITS = ("train", "dev", "test")
LM_TEXT = "lm_text.txt"  # per language: text-only sentences for the CTC baseline's n-gram LM


@dataclass(frozen=True)
class Voice:
    speaker: str  # MLS speaker id
    language: str
    variant: str
    gender: str
    rate: int  # words per minute
    pitch: int  # 0-99

    @property
    def espeak_name(self) -> str:
        return f"{ESPEAK_VOICE[self.language]}+{self.variant}"

    def describe(self) -> str:
        return f"espeak-ng {self.espeak_name} -s {self.rate} -p {self.pitch}"


@dataclass(frozen=True)
class Utterance:
    id: str
    language: str
    split: str
    text: str  # what espeak-ng reads (original casing and punctuation)
    transcript: str  # MLS-normalized
    voice: Voice

    @property
    def rel_path(self) -> str:
        spk, book, _ = self.id.split("_")
        return f"mls_{self.language}/{self.split}/audio/{spk}/{book}/{self.id}.flac"


def split_variants(seed: int, n_eval: int) -> dict[str, list[tuple[str, str]]]:
    """One partition of the variants for every language: {"train", "dev", "test"} pools, pairwise
    disjoint, each evaluation pool with both genders in the proportion of the whole list."""
    pool = max(EVAL_POOL, n_eval)
    rng = random.Random(f"voice-split-{seed}")
    out: dict[str, list[tuple[str, str]]] = {"test": [], "dev": [], "train": []}
    for gender in ("F", "M"):
        group = sorted(v for v in VARIANTS if v[1] == gender)
        rng.shuffle(group)
        k = max(1, round(pool * len(group) / len(VARIANTS)))
        out["test"] += group[:k]
        out["dev"] += group[k : 2 * k]
        out["train"] += group[2 * k :]
    return out


def make_voices(language: str, n_train: int, n_eval: int, seed: int) -> dict[str, list[Voice]]:
    """Voices {"train", "dev", "test"} for one language, drawn from `split_variants`' pools."""
    pools = split_variants(seed, n_eval)
    for split, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        if n > len(pools[split]):
            raise UserError(
                f"data.synthetic: {split} needs {n} voices but only {len(pools[split])} espeak-ng variants are "
                f"held for {split} ({len(VARIANTS)} in all, {max(EVAL_POOL, n_eval)} per evaluation split); "
                f"lower data.synthetic.{'train' if split == 'train' else 'eval'}_speakers"
            )
    rng = random.Random(f"voices-{seed}-{language}")
    base = (LANGUAGES.index(language) + 1) * 1000
    voices: dict[str, list[Voice]] = {}
    i = 0
    for split, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        voices[split] = []
        for var, gender in rng.sample(pools[split], n):
            voices[split].append(Voice(str(base + i), language, var, gender,
                                       rate=rng.randrange(130, 200, 5), pitch=rng.randrange(25, 76, 5)))
            i += 1
    return voices


def voices_report(plan: list[Utterance]) -> dict[str, list[str]]:
    """The sorted variant names each split uses across all languages (data_report.json "voices")."""
    return {split: sorted({u.voice.variant for u in plan if u.split == split}) for split in SPLITS}


def plan_language(cfg: Config, language: str, sentences: list[str]) -> list[Utterance]:
    """Pick disjoint train/dev/test sentences and assign voices round-robin."""
    syn = cfg.data.synthetic
    rng = random.Random(f"sentences-{cfg.seed}-{language}")
    pool = [s for s in sentences if syn.min_words <= len(normalize_transcript(s).split()) <= syn.max_words]
    rng.shuffle(pool)
    need = {"test": syn.test_per_language, "dev": syn.dev_per_language, "train": syn.train_per_language}
    if len(pool) < sum(need.values()):
        raise UserError(
            f"{language}: only {len(pool)} usable sentences with {syn.min_words}-{syn.max_words} words, "
            f"{sum(need.values())} needed; lower data.synthetic.*_per_language"
        )
    voices = make_voices(language, syn.train_speakers, syn.eval_speakers, cfg.seed)
    plan: list[Utterance] = []
    start = 0
    count: dict[str, int] = defaultdict(int)  # per speaker: ids stay unique
    for split in ("test", "dev", "train"):
        chosen = pool[start : start + need[split]]
        start += need[split]
        plan += assign_voices(language, split, chosen, voices[split], count)
    return plan


def assign_voices(language: str, split: str, sentences: list[str], voices: list[Voice],
                  count: dict[str, int], first_book: int = 0) -> list[Utterance]:
    """`sentences` spoken by `voices` round-robin; `count` (per speaker, shared across calls) keeps
    ids unique; books of BOOK_SIZE numbered from `first_book`."""
    out = []
    for i, sent in enumerate(sentences):
        voice = voices[i % len(voices)]
        k = count[voice.speaker]
        count[voice.speaker] += 1
        book = f"{voice.speaker}{first_book + k // BOOK_SIZE:02d}"
        uid = f"{voice.speaker}_{book}_{k % BOOK_SIZE:06d}"
        out.append(Utterance(uid, language, split, sent, normalize_transcript(sent), voice))
    return out


def plan_test_set(
    language: str, sentences: list[str], voices: list[Voice], first_book: int
) -> list[Utterance]:
    """A test-only plan (e.g. the out-of-domain set): `sentences` in order, voices round-robin, books
    numbered from `first_book` so ids differ from the corpus's own test ids for the same speakers."""
    return assign_voices(language, "test", sentences, voices, defaultdict(int), first_book)


def speak(text: str, voice: Voice) -> np.ndarray:
    """espeak-ng -> float32 16 kHz mono samples."""
    cmd = [
        "espeak-ng",
        "-v",
        voice.espeak_name,
        "-s",
        str(voice.rate),
        "-p",
        str(voice.pitch),
        "--stdout",
        text,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, check=True, timeout=60)
    except FileNotFoundError:
        raise UserError("espeak-ng is not installed: run `make setup` (apt-get install espeak-ng)") from None
    except subprocess.CalledProcessError as e:
        raise UserError(
            f"espeak-ng failed for voice {voice.espeak_name}: {e.stderr.decode(errors='replace')}"
        ) from None
    # espeak-ng writes a 44-byte WAV header (length fields unset when piping), then int16
    pcm = np.frombuffer(proc.stdout[44:], dtype="<i2").astype(np.float32) / 32768.0
    return resample(pcm, ESPEAK_RATE, SAMPLE_RATE)


def synthesize_one(args: tuple[Utterance, str]) -> tuple[str, int]:
    """Speak one utterance and write its FLAC; returns (id, num_samples)."""
    utt, corpus = args
    wave = speak(utt.text, utt.voice)
    pcm = np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16)
    out = Path(corpus) / utt.rel_path
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return utt.id, len(pcm)


def synthesize_all(plan: list[Utterance], corpus: Path, workers: int) -> dict[str, int]:
    """Speak every planned utterance into `corpus` (a progress bar); {id: num_samples}."""
    from tqdm.auto import tqdm

    samples: dict[str, int] = {}
    jobs = [(u, str(corpus)) for u in plan]
    with process_pool(workers) as pool:
        it = pool.imap_unordered(synthesize_one, jobs, chunksize=8)
        for uid, n in tqdm(it, total=len(jobs), desc="espeak-ng synthesis", unit="utt"):
            samples[uid] = n
    return samples


def write_text_files(
    corpus: Path,
    plan: list[Utterance],
    samples: dict[str, int],
    title: str = "LibreOffice help",
    splits: tuple[str, ...] = SPLITS,
) -> None:
    """transcripts.txt per split and metainfo.txt per language, sorted, so bytes are stable;
    `title` is metainfo's TITLE column (the text source)."""
    by_lang: dict[str, list[Utterance]] = defaultdict(list)
    for utt in plan:
        by_lang[utt.language].append(utt)
    for language, utts in by_lang.items():
        lang_dir = corpus / f"mls_{language}"
        for split in splits:
            lines = sorted(f"{u.id}\t{u.transcript}\n" for u in utts if u.split == split)
            (lang_dir / split).mkdir(parents=True, exist_ok=True)
            (lang_dir / split / "transcripts.txt").write_text("".join(lines), encoding="utf-8")
        minutes: dict[tuple, float] = defaultdict(float)
        for u in utts:
            book = u.id.split("_")[1]
            minutes[(u.voice.speaker, u.voice.gender, u.split, book, u.voice.describe())] += (
                samples[u.id] / SAMPLE_RATE / 60
            )
        rows = [
            "SPEAKER   |   GENDER   | PARTITION  |  MINUTES   |  BOOK ID   |       TITLE          |  CHAPTER\n"
        ]
        for (spk, gender, split, book, desc), mins in sorted(minutes.items()):
            rows.append(
                f"{spk:<9} | {gender:<10} | {split:<10} | {mins:<10.3f} | {book:<10} | {title} | {desc}\n"
            )
        (lang_dir / "metainfo.txt").write_text("".join(rows), encoding="utf-8")


def lm_text_lines(sentences: list[str], spoken: list[Utterance]) -> list[str]:
    """The language's clean sentences that no split speaks, normalized like transcripts, unique and
    sorted: LM text that shares no sentence with train, dev or test (as MLS's LM corpora exclude
    the books of its evaluation sets)."""
    held = {u.transcript for u in spoken}
    return sorted({t for t in (normalize_transcript(s) for s in sentences) if t and t not in held})


def write_lm_text(corpus: Path, language: str, sentences: list[str], spoken: list[Utterance]) -> int:
    lines = lm_text_lines(sentences, spoken)
    (corpus / f"mls_{language}" / LM_TEXT).write_text("".join(f"{t}\n" for t in lines), encoding="utf-8")
    return len(lines)


def build_synthetic_corpus(cfg: Config, corpus: Path, cache: Path) -> dict:
    """Write the whole synthetic corpus under `corpus`; returns a summary for the report."""
    workers = num_workers(cfg.data.num_workers)
    sentences = sentences_for_all(cfg.data.languages, cache, workers)
    plan: list[Utterance] = []
    for language in cfg.data.languages:
        plan.extend(plan_language(cfg, language, sentences[language]))
    for language in cfg.data.languages:
        shutil.rmtree(corpus / f"mls_{language}", ignore_errors=True)
    samples = synthesize_all(plan, corpus, workers)
    write_text_files(corpus, plan, samples)
    lm_sentences = {
        lang: write_lm_text(corpus, lang, sentences[lang], [u for u in plan if u.language == lang])
        for lang in cfg.data.languages
    }
    seconds = sum(samples.values()) / SAMPLE_RATE
    return {
        "utterances": len(plan),
        "audio_seconds": round(seconds, 3),
        "workers": workers,
        "text_packages": {lang: source_package(lang, cache) for lang in cfg.data.languages},
        "sentences_available": {lang: len(sentences[lang]) for lang in cfg.data.languages},
        "lm_text_sentences": lm_sentences,
        "voices": voices_report(plan),
    }
