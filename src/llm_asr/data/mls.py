"""Real MLS: resumable, verified download of the per-language archives, and a reader/validator
for any MLS-layout directory.

`read_mls_dir(data_dir, split)` is the one way the project reads an MLS-layout corpus
(synthetic or real, any subset of languages, maybe only one split). It returns every
usable utterance and, for everything else, a skipped entry with its reason: non-UTF-8
or malformed transcript lines, empty transcripts, duplicate ids, ids without audio,
audio without ids, and audio that is corrupt, empty, truncated, NaN, not 16 kHz or not
mono (see `llm_asr.data.audio.read_corpus_audio`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from llm_asr.config import LANGUAGES
from llm_asr.data.audio import SAMPLE_RATE, BadAudio, read_corpus_audio
from llm_asr.errors import UserError

_ID = re.compile(r"^\d+_\d+_\d+$")


@dataclass(frozen=True)
class MlsItem:
    id: str
    language: str
    split: str
    audio_path: Path
    text: str
    num_samples: int
    speaker: str
    gender: str | None = None

    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE


def _skip(uid: str, language: str, split: str, reason: str) -> dict:
    return {"id": uid, "language": language, "split": split, "reason": reason}


def read_metainfo(lang_dir: Path) -> dict[str, str]:
    """speaker -> gender from metainfo.txt ({} when absent or unreadable)."""
    path = lang_dir / "metainfo.txt"
    if not path.is_file():
        return {}
    genders = {}
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 2 and fields[0].isdigit():
            genders[fields[0]] = fields[1]
    return genders


def _read_transcripts(path: Path, language: str, split: str) -> tuple[dict[str, str], list[dict]]:
    texts: dict[str, str] = {}
    skipped: list[dict] = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            head = raw.split(b"\t", 1)[0].decode("ascii", errors="replace").strip()
            uid = head if _ID.match(head) else f"{path.name}:{n}"
            skipped.append(_skip(uid, language, split, "transcript line is not UTF-8"))
            continue
        uid, _, text = line.partition("\t")
        uid, text = uid.strip(), " ".join(text.split())
        if not _ID.match(uid):
            skipped.append(
                _skip(
                    f"{path.name}:{n}",
                    language,
                    split,
                    "malformed line (expected <spk>_<book>_<utt>\\t<text>)",
                )
            )
        elif uid in texts:
            skipped.append(
                _skip(uid, language, split, f"duplicate id in transcripts.txt (line {n}; first kept)")
            )
        elif not text:
            skipped.append(_skip(uid, language, split, "empty transcript"))
            texts[uid] = ""
        else:
            texts[uid] = text
    return {k: v for k, v in texts.items() if v}, skipped


def _check_audio(path: str, max_samples: int | None = None) -> tuple[str, int | str]:
    """(path, samples) or (path, reason it is unusable); over-long audio is not decoded."""
    import soundfile as sf

    try:
        if max_samples is not None and Path(path).is_file():
            try:
                frames = sf.info(path).frames
            except (sf.LibsndfileError, RuntimeError, ValueError):
                frames = 0  # unreadable: read_corpus_audio says why
            if frames > max_samples:
                limit, seconds = max_samples / SAMPLE_RATE, frames / SAMPLE_RATE
                return path, f"longer than {limit:g} s ({seconds:.0f} s; data.max_utterance_s)"
        return path, len(read_corpus_audio(path))
    except BadAudio as e:
        return path, str(e)
    except OSError as e:  # a directory named .flac, unreadable file, vanished file
        return path, f"cannot read audio file ({e.strerror or e})"


def _read_split(
    lang_dir: Path, language: str, split: str, pool, max_samples: int | None = None
) -> tuple[list[MlsItem], list[dict]]:
    split_dir = lang_dir / split
    trans = split_dir / "transcripts.txt"
    if not trans.is_file():
        return [], (
            [_skip(str(split_dir), language, split, "no transcripts.txt")] if split_dir.is_dir() else []
        )
    texts, skipped = _read_transcripts(trans, language, split)
    audio = {p.stem: p for p in sorted((split_dir / "audio").glob("*/*/*.flac"))}
    reported = {s["id"] for s in skipped}
    for uid in sorted(set(audio) - set(texts)):
        if uid not in reported:
            skipped.append(_skip(uid, language, split, "audio without a transcript"))
    present = [uid for uid in sorted(texts) if uid in audio]
    for uid in sorted(set(texts) - set(audio)):
        skipped.append(_skip(uid, language, split, "transcript id without audio"))
    from tqdm.auto import tqdm

    paths = [str(audio[u]) for u in present]
    checked = dict(
        tqdm(
            pool.imap_unordered(partial(_check_audio, max_samples=max_samples), paths, chunksize=16),
            total=len(paths),
            desc=f"check {language}/{split} audio",
            unit="file",
        )
    )
    genders = read_metainfo(lang_dir)
    items = []
    for uid in present:
        result = checked[str(audio[uid])]
        if isinstance(result, str):
            skipped.append(_skip(uid, language, split, result))
            continue
        spk = uid.split("_")[0]
        items.append(
            MlsItem(uid, language, split, audio[uid].absolute(), texts[uid], result, spk, genders.get(spk))
        )
    return items, skipped


def read_mls_dir(
    data_dir: str | Path,
    split: str,
    languages: list[str] | tuple[str, ...] | None = None,
    num_workers: int = 0,
    max_duration_s: float | None = None,
) -> tuple[list[MlsItem], list[dict]]:
    """Usable utterances of one split of an MLS-layout dir, and the skipped ones with reasons
    (utterances longer than `max_duration_s` among them).

    Raises UserError when the directory holds no `mls_<language>` folder or when no
    utterance is usable (the message counts the skip reasons).
    """
    from llm_asr.data.parallel import num_workers as _workers
    from llm_asr.data.parallel import process_pool

    data_dir = Path(data_dir)
    wanted = list(languages) if languages else list(LANGUAGES)
    lang_dirs = [(lang, data_dir / f"mls_{lang}") for lang in wanted if (data_dir / f"mls_{lang}").is_dir()]
    if not lang_dirs:
        raise UserError(f"{data_dir}: no MLS-layout folders (mls_<language>/) for {', '.join(wanted)}")
    max_samples = int(max_duration_s * SAMPLE_RATE) if max_duration_s else None
    items: list[MlsItem] = []
    skipped: list[dict] = []
    with process_pool(_workers(num_workers)) as pool:
        for lang, lang_dir in lang_dirs:
            its, sk = _read_split(lang_dir, lang, split, pool, max_samples)
            items += its
            skipped += sk
    if not items:
        reasons: dict[str, int] = {}
        for s in skipped:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        detail = (
            "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items())) or f"no {split}/transcripts.txt found"
        )
        raise UserError(f"{data_dir}: no usable '{split}' utterances ({detail})")
    return items, skipped


def archive_name(language: str, archive_format: str) -> str:
    return f"mls_{language}.tar.gz" if archive_format == "flac" else f"mls_{language}_opus.tar.gz"


def fetch_mls(cfg, corpus: Path, cache: Path) -> dict:
    """Download (resumable, verified) and unpack each language's MLS archive into `corpus`.

    Archives are kept in `<cache>/mls/`; a language already unpacked from the same
    archive (marker file with its SHA-256) is not unpacked again.
    """
    from llm_asr.data.download import download, unpack

    mls = cfg.data.mls
    if mls.archive_format != "flac":
        raise UserError(
            "data.mls.archive_format: only 'flac' is supported (the corpus reader and features need FLAC)"
        )
    facts: dict[str, dict] = {}
    for language in cfg.data.languages:
        name = archive_name(language, mls.archive_format)
        got = download(f"{mls.base_url.rstrip('/')}/{name}", cache / "mls" / name, mls.sha256.get(language))
        lang_dir = corpus / f"mls_{language}"
        marker = lang_dir / ".unpacked"
        if not (marker.is_file() and marker.read_text().strip() == got["sha256"]):
            top = f"mls_{language}/"
            keep = lambda n, top=top: (
                n.startswith(top)
                and (
                    n.count("/") == 1 or n.split("/")[1] in mls.splits
                )
            )
            got["files"] = unpack(Path(got["path"]), corpus, keep)
            if not lang_dir.is_dir():
                raise UserError(f"{name} holds no '{top}' folder: is data.mls.base_url an MLS release?")
            marker.write_text(got["sha256"] + "\n")
        facts[language] = got
    return {"archives": facts}
