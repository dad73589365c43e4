"""Sentences for the synthetic corpus: LibreOffice help text, cleaned and normalized as MLS.

The Debian packages `libreoffice-help-<lang>` are fetched with `apt-get download` and
unpacked with `dpkg -x` into the cache; every `<p>` paragraph of their HTML pages is
split into sentences, and a sentence is kept only if it looks like one (starts
upper-case, ends with . ! ?, only letters and basic punctuation, no digits, no
acronyms) and `langid` (restricted to the 8 MLS languages) agrees on its language.
Kept sentences are normalized as MLS transcripts are: lowercase, no punctuation except
word-internal apostrophes, single spaces.

The out-of-domain test set (stage prepare_ood) reads a second text source through the same
cleaning: the Debian Administrator's Handbook (Debian `debian-handbook`, one package holding
all 8 languages), book prose about running Debian rather than instructions for an office suite.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import subprocess
import unicodedata
from collections.abc import Iterable
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

# The out-of-domain text: one Debian package, one HTML folder per language (Brazilian Portuguese is
# its only Portuguese; espeak-ng's `pt` voice reads it, one more shift away from the training data)
HANDBOOK_PACKAGE = "debian-handbook"
HANDBOOK_HTML = "usr/share/doc/debian-handbook/html"
HANDBOOK_LANGS: dict[str, str] = {
    "english": "en-US", "german": "de-DE", "dutch": "nl-NL", "french": "fr-FR",
    "spanish": "es-ES", "italian": "it-IT", "portuguese": "pt-BR", "polish": "pl-PL",
}  # fmt: skip
# bump when the handbook's paragraph rules below change: its cached sentence lists are keyed by it
HANDBOOK_VERSION = 1
# Its prose is `<div class="para">`; a sentence holding a command, file name, package name, man page
# reference, key, URL or placeholder is dropped (espeak-ng would spell `/etc/apt` or `apt-get` out,
# and no MLS reader says them): those elements leave `_MARKUP`, which `is_clean_sentence` rejects.
HANDBOOK_PARAGRAPH = ("div", "para")
HANDBOOK_REJECT_TAGS = frozenset({"code", "pre", "kbd", "tt", "sup", "samp", "var"})
HANDBOOK_REJECT_CLASSES = frozenset(
    {"pkg", "citerefentry", "refentrytitle", "keycap", "url", "replaceable", "userinput", "email",
     "command", "filename", "literal", "option", "computeroutput", "varname", "function"}
)  # fmt: skip
_MARKUP = "\x00"

# a sentence starts with a letter, or with _MARKUP (a command opening a sentence then drops that one alone)
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[¿¡]?[^\W\d_]|\x00)")
_ALLOWED = re.compile(r"^[^\W\d_](?:[^\W\d_]|[ ,;:.!?'’¿¡-])*[.!?]$")


class _ParagraphParser(html.parser.HTMLParser):
    """Collects the text of every paragraph element (nested inline tags included): `<p>` by
    default, or `<tag class="cls">`. Inside a paragraph, a tag in `reject_tags` or with a class
    in `reject_classes` leaves `_MARKUP` in the text, so its sentence fails `is_clean_sentence`."""

    def __init__(
        self,
        paragraph: tuple[str, str | None] = ("p", None),
        reject_tags: frozenset[str] = frozenset(),
        reject_classes: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._tag, self._cls = paragraph
        self._reject_tags, self._reject_classes = reject_tags, reject_classes
        self._depth = 0  # open paragraph-tag elements (nested same-name tags included)
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        if self._depth > 0 and (tag in self._reject_tags or classes & self._reject_classes):
            self._buf.append(_MARKUP)
        if tag == self._tag and (self._depth > 0 or self._cls is None or self._cls in classes):
            self._depth += 1
            if self._depth == 1:
                self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag == self._tag and self._depth > 0:
            self._depth -= 1
            if self._depth == 0:
                self.paragraphs.append(" ".join("".join(self._buf).split()))

    def handle_data(self, data: str) -> None:
        if self._depth > 0:
            self._buf.append(data)


def html_paragraphs(
    text: str,
    paragraph: tuple[str, str | None] = ("p", None),
    reject_tags: frozenset[str] = frozenset(),
    reject_classes: frozenset[str] = frozenset(),
) -> list[str]:
    parser = _ParagraphParser(paragraph, reject_tags, reject_classes)
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


def fetch_deb(pkg: str, group: Path, inner: str) -> Path:
    """Download and unpack a Debian package into `group/<pkg>/` (the .deb kept in `group/debs/`);
    return its folder `inner` (checked to exist). `group/<pkg>/.complete` names the .deb."""
    root = group / pkg
    wanted = root / inner
    if wanted.is_dir() and (root / ".complete").exists():
        return wanted
    debs = group / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{pkg}_*.deb")) or _apt_download(pkg, debs)
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg", "-x", str(found[-1]), str(root)], check=True)
    if not wanted.is_dir():
        raise UserError(f"{found[-1].name} has no {inner}")
    (root / ".complete").write_text(found[-1].name + "\n")
    return wanted


def fetch_help_package(language: str, cache: Path) -> Path:
    """Download and unpack `libreoffice-help-<lang>` into the cache; return its help folder."""
    suffix, folder, _ = HELP_LANGS[language]
    inner = f"usr/share/libreoffice/help/{folder}/text"
    return fetch_deb(f"libreoffice-help-{suffix}", cache / "libreoffice", inner)


def _langid_classifier(code_set: list[str]):
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=False)
    ident.set_languages(code_set)
    return ident


def clean_sentences(paragraphs: Iterable[str], language: str) -> list[str]:
    """The clean, language-checked, de-duplicated sentences of `paragraphs` (original casing), in order."""
    code = HELP_LANGS[language][2]
    ident = _langid_classifier([c for _, _, c in HELP_LANGS.values()])
    seen: set[str] = set()
    out: list[str] = []
    for para in paragraphs:
        for sent in split_sentences(para):
            norm = normalize_transcript(sent)
            if norm in seen or not is_clean_sentence(sent):
                continue
            seen.add(norm)
            if ident.classify(sent)[0] == code:
                out.append(unicodedata.normalize("NFC", sent))
    return out


def extract_sentences(help_dir: Path, language: str) -> list[str]:
    """Clean, language-checked, de-duplicated sentences (original casing), in a stable order."""
    pages = sorted(help_dir.rglob("*.html"))
    texts = (page.read_text(encoding="utf-8", errors="replace") for page in pages)
    paragraphs = (p for text in texts for p in html_paragraphs(text))
    return clean_sentences(paragraphs, language)


def handbook_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of one Debian Administrator's Handbook page (markup-bearing ones marked)."""
    return html_paragraphs(text, HANDBOOK_PARAGRAPH, HANDBOOK_REJECT_TAGS, HANDBOOK_REJECT_CLASSES)


def _write_cached(cached: Path, package: str, sents: list[str]) -> None:
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps({"package": package, "sentences": sents}, ensure_ascii=False), encoding="utf-8")
    tmp.replace(cached)


def _handbook_cache(language: str, cache: Path) -> Path:
    return cache / "sentences" / f"handbook-{language}.v{CLEANING_VERSION}.{HANDBOOK_VERSION}.json"


def handbook_sentences(language: str, cache: Path) -> list[str]:
    """Cached clean sentences of the handbook in `language` (fetching `debian-handbook` if needed),
    pages in name order (the book's top-level pages; `Common_Content/` is boilerplate)."""
    cached = _handbook_cache(language, cache)
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))["sentences"]
    html_dir = fetch_deb(HANDBOOK_PACKAGE, cache / "handbook", HANDBOOK_HTML)
    pages = sorted((html_dir / HANDBOOK_LANGS[language]).glob("*.html"))
    if not pages:
        raise UserError(f"{HANDBOOK_PACKAGE} has no pages for {language} under {html_dir}")
    texts = (page.read_text(encoding="utf-8", errors="replace") for page in pages)
    paragraphs = (p for text in texts for p in handbook_paragraphs(text))
    sents = clean_sentences(paragraphs, language)
    _write_cached(cached, (html_dir.parents[4] / ".complete").read_text().strip(), sents)
    return sents


def handbook_package(cache: Path) -> str:
    """The .deb the handbook sentences came from (for the OOD report)."""
    marker = cache / "handbook" / HANDBOOK_PACKAGE / ".complete"
    return marker.read_text().strip() if marker.exists() else "unknown"


def drop_known(sentences: list[str], known: set[str]) -> tuple[list[str], list[str]]:
    """(sentences whose normalized text is not in `known`, those that are), each in input order."""
    kept, dropped = [], []
    for s in sentences:
        (dropped if normalize_transcript(s) in known else kept).append(s)
    return kept, dropped


def sentences_for(language: str, cache: Path) -> list[str]:
    """Cached `extract_sentences` for one language (fetching the package if needed)."""
    cached = cache / "sentences" / f"{language}.v{CLEANING_VERSION}.json"
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))["sentences"]
    help_dir = fetch_help_package(language, cache)
    sents = extract_sentences(help_dir, language)
    _write_cached(cached, (help_dir.parents[5] / ".complete").read_text().strip(), sents)
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


def handbook_sentences_for_all(
    languages: list[str] | tuple[str, ...], cache: Path, workers: int
) -> dict[str, list[str]]:
    """`handbook_sentences` over several languages: one download, uncached languages in parallel."""
    from llm_asr.data.parallel import process_pool

    todo = [lang for lang in languages if not _handbook_cache(lang, cache).exists()]
    if todo:
        fetch_deb(HANDBOOK_PACKAGE, cache / "handbook", HANDBOOK_HTML)  # once, not once per worker
    if len(todo) > 1 and workers > 1:
        with process_pool(min(workers, len(todo))) as pool:
            pool.starmap(handbook_sentences, [(lang, cache) for lang in todo])
    return {lang: handbook_sentences(lang, cache) for lang in languages}


def source_package(language: str, cache: Path) -> str:
    """The .deb the cached sentences of `language` came from (for the data report)."""
    cached = cache / "sentences" / f"{language}.v{CLEANING_VERSION}.json"
    return json.loads(cached.read_text(encoding="utf-8"))["package"] if cached.exists() else "unknown"
