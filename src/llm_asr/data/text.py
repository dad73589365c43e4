"""Sentences for the synthetic corpus: LibreOffice help text, cleaned and normalized as MLS.

The Debian packages `libreoffice-help-<lang>` are fetched with `apt-get download` and
unpacked with `dpkg -x` into the cache; every `<p>` paragraph of their HTML pages is
split into sentences, and a sentence is kept only if it looks like one (starts
upper-case, ends with . ! ?, only letters and basic punctuation, no digits, no
acronyms) and `langid` (restricted to the 8 MLS languages) agrees on its language.
Kept sentences are normalized as MLS transcripts are: lowercase, no punctuation except
word-internal apostrophes, single spaces.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import subprocess
import unicodedata
from pathlib import Path

from llm_asr.errors import UserError

# MLS language name -> (Debian package suffix, help folder, ISO 639-1 code for langid)
HELP_LANGS: dict[str, tuple[str, str, str]] = {
    "english": ("en-us", "en-US", "en"),
    "german": ("de", "de", "de"),
    "dutch": ("nl", "nl", "nl"),
    "french": ("fr", "fr", "fr"),
    "spanish": ("es", "es", "es"),
    "italian": ("it", "it", "it"),
    "portuguese": ("pt", "pt", "pt"),
    "polish": ("pl", "pl", "pl"),
}
# bump when the cleaning rules change: cached sentence lists are keyed by it
CLEANING_VERSION = 1

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[¿¡]?[^\W\d_])")
_ALLOWED = re.compile(r"^[^\W\d_](?:[^\W\d_]|[ ,;:.!?'’¿¡-])*[.!?]$")


class _ParagraphParser(html.parser.HTMLParser):
    """Collects the text of every <p> element (nested inline tags included)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._depth = 0
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "p":
            self._depth += 1
            if self._depth == 1:
                self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "p" and self._depth > 0:
            self._depth -= 1
            if self._depth == 0:
                self.paragraphs.append(" ".join("".join(self._buf).split()))

    def handle_data(self, data: str) -> None:
        if self._depth > 0:
            self._buf.append(data)


def html_paragraphs(text: str) -> list[str]:
    parser = _ParagraphParser()
    parser.feed(text)
    parser.close()
    return [p for p in parser.paragraphs if p]


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENT_SPLIT.split(paragraph) if s.strip()]


def is_clean_sentence(sentence: str) -> bool:
    """A plain sentence: upper-case start, .!? end, letters and basic punctuation only."""
    s = unicodedata.normalize("NFC", sentence)
    if not _ALLOWED.match(s):
        return False
    if not s[0].isupper():
        return False
    if any(w.isupper() and len(w) > 1 for w in re.findall(r"[^\W\d_]+", s)):  # acronyms: PDF, OK
        return False
    return not re.search(r"\.\w|\.\.|--| -|- ", s)  # file names, ellipses, dashes as punctuation


def normalize_transcript(text: str) -> str:
    """MLS style: lowercase, letters and word-internal apostrophes only, single spaces."""
    s = unicodedata.normalize("NFC", text).lower().replace("’", "'")
    s = re.sub(r"[^\w' ]|\d|_", " ", s)
    words = [w.strip("'") for w in s.split()]
    return " ".join(w for w in words if w)


def _apt_download(pkg: str, debs: Path) -> list[Path]:
    """`apt-get download` into `debs`; as root, refresh empty package lists once and retry."""
    cmd = ["apt-get", "download", pkg]
    proc = subprocess.run(cmd, cwd=debs, capture_output=True, text=True, check=False)
    if proc.returncode != 0 and "Unable to locate package" in proc.stderr and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)  # e.g. slim images
        proc = subprocess.run(cmd, cwd=debs, capture_output=True, text=True, check=False)
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if proc.returncode != 0 or not found:
        msg = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no .deb produced"]
        raise UserError(
            f"apt-get download {pkg} failed ({msg[0]}); run `apt-get update` or check the network"
        )
    return found


def fetch_help_package(language: str, cache: Path) -> Path:
    """Download and unpack `libreoffice-help-<lang>` into the cache; return its help folder."""
    suffix, folder, _ = HELP_LANGS[language]
    pkg = f"libreoffice-help-{suffix}"
    root = cache / "libreoffice" / pkg
    help_dir = root / "usr" / "share" / "libreoffice" / "help" / folder / "text"
    if help_dir.is_dir() and (root / ".complete").exists():
        return help_dir
    debs = cache / "libreoffice" / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{pkg}_*.deb")) or _apt_download(pkg, debs)
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg", "-x", str(found[-1]), str(root)], check=True)
    if not help_dir.is_dir():
        raise UserError(f"{found[-1].name} has no help pages under {help_dir}")
    (root / ".complete").write_text(found[-1].name + "\n")
    return help_dir


def _langid_classifier(code_set: list[str]):
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=False)
    ident.set_languages(code_set)
    return ident


def extract_sentences(help_dir: Path, language: str) -> list[str]:
    """Clean, language-checked, de-duplicated sentences (original casing), in a stable order."""
    code = HELP_LANGS[language][2]
    ident = _langid_classifier([c for _, _, c in HELP_LANGS.values()])
    seen: set[str] = set()
    out: list[str] = []
    for page in sorted(help_dir.rglob("*.html")):
        for para in html_paragraphs(page.read_text(encoding="utf-8", errors="replace")):
            for sent in split_sentences(para):
                norm = normalize_transcript(sent)
                if norm in seen or not is_clean_sentence(sent):
                    continue
                seen.add(norm)
                if ident.classify(sent)[0] == code:
                    out.append(unicodedata.normalize("NFC", sent))
    return out


def sentences_for(language: str, cache: Path) -> list[str]:
    """Cached `extract_sentences` for one language (fetching the package if needed)."""
    cached = cache / "sentences" / f"{language}.v{CLEANING_VERSION}.json"
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))["sentences"]
    help_dir = fetch_help_package(language, cache)
    sents = extract_sentences(help_dir, language)
    package = (help_dir.parents[5] / ".complete").read_text().strip()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps({"package": package, "sentences": sents}, ensure_ascii=False), encoding="utf-8")
    tmp.replace(cached)
    return sents


def sentences_for_all(
    languages: list[str] | tuple[str, ...], cache: Path, workers: int
) -> dict[str, list[str]]:
    """`sentences_for` over several languages, uncached ones in parallel processes."""
    from llm_asr.data.parallel import process_pool

    todo = [
        lang for lang in languages if not (cache / "sentences" / f"{lang}.v{CLEANING_VERSION}.json").exists()
    ]
    if len(todo) > 1 and workers > 1:
        with process_pool(min(workers, len(todo))) as pool:
            pool.starmap(sentences_for, [(lang, cache) for lang in todo])
    return {lang: sentences_for(lang, cache) for lang in languages}


def source_package(language: str, cache: Path) -> str:
    """The .deb the cached sentences of `language` came from (for the data report)."""
    cached = cache / "sentences" / f"{language}.v{CLEANING_VERSION}.json"
    return json.loads(cached.read_text(encoding="utf-8"))["package"] if cached.exists() else "unknown"
