"""A generator of malformed inputs: audio files and transcript lines, written into an MLS-layout dir.

`AUDIO_CASES` are (name, writer) pairs: `writer(path)` writes one (usually broken) audio
file. `SERVING_CASES` (same shape) attack the scoring server: headers that promise hours
(a decompression bomb), rates no recorder produces, too many channels; the server must
refuse each from its header, before decoding. `PATH_CASES` are file paths a request
might name. `TRANSCRIPT_CASES` are (name, builder) pairs: `builder(split_dir, uid)` returns raw
transcript lines (bytes) and may write audio. `write_fuzz_corpus(root)` lays every case into
`mls_german/test` beside good utterances (and clean train/dev splits), and returns the
expected inputs so a test can check `inputs == processed + skipped` per stage.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

SR = 16000
LANG = "german"


def tone(seconds: float, sr: int = SR, channels: int = 1, amp: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    wave = (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def flac_bytes(wave: np.ndarray, sr: int = SR, subtype: str = "PCM_16", fmt: str = "FLAC") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _truncated(frac: float) -> Callable[[Path], None]:
    data = flac_bytes(tone(1.5))
    return _bytes(data[: max(1, int(len(data) * frac))])


def _float_wav(fill: Callable[[np.ndarray], None]) -> Callable[[Path], None]:
    """A float WAV (named .flac) whose samples `fill` damages: FLAC cannot hold NaN/inf."""
    wave = tone(1.0)
    fill(wave)
    return _bytes(flac_bytes(wave, subtype="FLOAT", fmt="WAV"))


def _set(idx, value):
    def fill(w):
        w[idx] = value

    return fill


def _one_hour(path: Path) -> None:
    """3600 s of near-silence written block by block (FLAC keeps it ~1 MB)."""
    block = np.zeros(SR * 60, dtype=np.float32)
    block[::400] = 1e-3
    with sf.SoundFile(path, "w", SR, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(60):
            f.write(block)


def _dir(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("a directory named like an audio file")


def _gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(b"not audio" * 100))


RNG = np.random.default_rng(7)
AUDIO_CASES: list[tuple[str, Callable[[Path], None]]] = [
    ("empty-file", _bytes(b"")),
    ("zero-length-flac", _bytes(flac_bytes(np.zeros(0, np.float32)))),
    ("truncated-5pct", _truncated(0.05)),
    ("truncated-50pct", _truncated(0.5)),
    ("truncated-90pct", _truncated(0.9)),
    ("truncated-1-byte", _truncated(0.0)),
    ("flac-header-only", _bytes(flac_bytes(tone(1.0))[:42])),
    ("flac-bit-flipped-body", _bytes((lambda d: d[:200] + bytes(b ^ 0xFF for b in d[200:400]) + d[400:])(
        flac_bytes(tone(1.0))))),
    ("rate-8000", _bytes(flac_bytes(tone(1.0, sr=8000), sr=8000))),
    ("rate-22050", _bytes(flac_bytes(tone(1.0, sr=22050), sr=22050))),
    ("rate-44100", _bytes(flac_bytes(tone(1.0, sr=44100), sr=44100))),
    ("rate-48000", _bytes(flac_bytes(tone(1.0, sr=48000), sr=48000))),
    ("stereo", _bytes(flac_bytes(tone(1.0, channels=2)))),
    ("six-channels", _bytes(flac_bytes(tone(1.0, channels=6)))),
    ("nan-first-sample", _float_wav(_set(0, np.nan))),
    ("nan-middle", _float_wav(_set(8000, np.nan))),
    ("all-nan", _float_wav(_set(slice(None), np.nan))),
    ("plus-inf", _float_wav(_set(100, np.inf))),
    ("minus-inf", _float_wav(_set(-1, -np.inf))),
    ("one-hour", _one_hour),
    ("one-sample", _bytes(flac_bytes(tone(1.0)[:1]))),
    ("ten-samples", _bytes(flac_bytes(tone(1.0)[:10]))),
    ("shorter-than-a-frame", _bytes(flac_bytes(tone(1.0)[:300]))),
    ("digital-silence", _bytes(flac_bytes(np.zeros(SR, np.float32)))),
    ("clipping-float-wav", _bytes(flac_bytes(tone(1.0, amp=30.0), subtype="FLOAT", fmt="WAV"))),
    ("pcm-24bit", _bytes(flac_bytes(tone(1.0), subtype="PCM_24"))),
    ("pcm-8bit", _bytes(flac_bytes(tone(1.0), subtype="PCM_S8"))),
    ("wav-named-flac", _bytes(flac_bytes(tone(1.0), fmt="WAV"))),
    ("ogg-named-flac", _bytes(flac_bytes(tone(1.0), fmt="OGG", subtype="VORBIS"))),
    ("text-file", _bytes(b"this is a transcript, not audio\n" * 20)),
    ("png-header", _bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))),
    ("random-bytes", _bytes(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())),
    ("gzip-file", _gzip),
    ("fake-flac-magic", _bytes(b"fLaC" + RNG.integers(0, 256, 600, dtype=np.uint8).tobytes())),
    ("riff-garbage", _bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64))),
    ("directory-named-flac", _dir),
]


def _flac_claiming(total_samples: int, seconds: float = 1.0) -> bytes:
    """A small FLAC whose STREAMINFO claims TOTAL_SAMPLES (0 = unknown length, as streams may)."""
    data = bytearray(flac_bytes(tone(seconds)))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO must be the first metadata block"
    # STREAMINFO body from byte 8: block sizes (4 bytes), frame sizes (6), then 64 bits of
    # sample rate (20) | channels - 1 (3) | bits per sample - 1 (5) | total samples (36)
    off = 8 + 10
    packed = int.from_bytes(data[off:off + 8], "big")
    packed = (packed & ~((1 << 36) - 1)) | total_samples
    data[off:off + 8] = packed.to_bytes(8, "big")
    return bytes(data)


SERVING_CASES: list[tuple[str, Callable[[Path], None]]] = [
    ("flac-header-claims-10-hours", _bytes(_flac_claiming(SR * 36000))),  # 1 s of data, ~30 KB
    ("flac-unknown-length", _bytes(_flac_claiming(0))),  # libsndfile: frames = 2**63 - 1
    ("rate-44101", _bytes(flac_bytes(tone(0.5, sr=44101), sr=44101))),  # a 16000/44101 resampling filter
    ("rate-192000", _bytes(flac_bytes(tone(0.5, sr=192000), sr=192000))),
    ("rate-1000", _bytes(flac_bytes(tone(0.5, sr=1000), sr=1000, fmt="WAV"))),
    ("wav-32-channels", _bytes(flac_bytes(tone(0.5, channels=32), fmt="WAV"))),
]
PATH_CASES = ["/etc/passwd", "/proc/self/environ", "../../mlflow.db", "file:///etc/passwd", "~/.ssh/id_rsa",
              "\\\\fileserver\\share\\clip.flac", "/dev/zero"]

# what the strict corpus reader (prepare-data, evaluate) must accept: valid 16 kHz mono audio
CORPUS_OK = {"pcm-24bit", "pcm-8bit", "wav-named-flac", "ogg-named-flac", "digital-silence",
             "clipping-float-wav"}
# what the lenient inference loader (transcribe, served model) accepts on top: other rates, channels
INFERENCE_OK = CORPUS_OK | {"rate-8000", "rate-22050", "rate-44100", "rate-48000", "stereo", "six-channels",
                            "one-hour"}
# what the served model answers with text: the hour is beyond tracking.max_audio_s (from its header),
# and no SERVING_CASES case
SERVED_OK = INFERENCE_OK - {"one-hour"}


def _audio(split_dir: Path, uid: str, wave: np.ndarray | None = None) -> None:
    spk, book, _ = uid.split("_")
    path = split_dir / "audio" / spk / book / f"{uid}.flac"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flac_bytes(tone(1.0) if wave is None else wave))


def _line(text: bytes) -> Callable[[Path, str], list[bytes]]:
    """A line `<uid>\\t<text>` with good audio."""
    def build(split_dir: Path, uid: str) -> list[bytes]:
        _audio(split_dir, uid)
        return [uid.encode() + b"\t" + text]

    return build


def _raw(line: Callable[[str], bytes], audio: bool = True) -> Callable[[Path, str], list[bytes]]:
    def build(split_dir: Path, uid: str) -> list[bytes]:
        if audio:
            _audio(split_dir, uid)
        return [line(uid)]

    return build


def _dup(second: bytes) -> Callable[[Path, str], list[bytes]]:
    def build(split_dir: Path, uid: str) -> list[bytes]:
        _audio(split_dir, uid)
        return [uid.encode() + b"\tder erste satz", uid.encode() + b"\t" + second]

    return build


def _orphan_audio(split_dir: Path, uid: str) -> list[bytes]:
    _audio(split_dir, uid)
    return []


TRANSCRIPT_CASES: list[tuple[str, Callable[[Path, str], list[bytes]]]] = [
    ("latin1-text", _line("gr\xfc\xdfe aus k\xf6ln".encode("latin-1"))),
    ("invalid-utf8-continuation", _line(b"abc \xc3\x28 def")),
    ("utf8-encoded-surrogate", _line(b"abc \xed\xa0\x80 def")),
    ("overlong-utf8", _line(b"abc \xc0\xaf def")),
    ("non-utf8-id", _raw(lambda u: u.encode()[:-1] + b"\xff\tein satz")),
    ("id-without-audio", _raw(lambda u: u.encode() + b"\tkein audio", audio=False)),
    ("audio-without-id", _orphan_audio),
    ("duplicate-id-same-text", _dup(b"der erste satz")),
    ("duplicate-id-other-text", _dup(b"ein anderer satz")),
    ("empty-text", _line(b"")),
    ("whitespace-text", _line(b"   \t  ")),
    ("no-tab", _raw(lambda u: u.encode() + b" ein satz ohne tab")),
    ("letters-in-id", _raw(lambda u: b"ab_cd_ef\tein satz")),
    ("two-part-id", _raw(lambda u: u.rsplit("_", 1)[0].encode() + b"\tein satz")),
    ("extra-tabs", _line(b"ein\tsatz\tmit\ttabs")),
    ("very-long-text", _line(("wort " * 4000).encode())),
    ("nul-and-control-chars", _line(b"ein\x00satz\x0bmit\x07steuer")),
    ("upper-case-and-digits", _line("Ein Satz mit 42 Zahlen, Punkt.".encode())),
    ("emoji-and-rtl", _line("satz \U0001f600 \u05e9\u05dc\u05d5\u05dd".encode())),
    ("crlf-line-end", _line(b"ein satz mit crlf\r")),
]


def _good(n: int, split: str) -> dict[str, str]:
    return {f"1{n}_10{n}_00000{i}": f"{split} satz nummer {i}" for i in range(3)}


def write_clean_split(root: Path, split: str) -> None:
    split_dir = root / f"mls_{LANG}" / split
    lines = []
    for i, (uid, text) in enumerate(sorted(_good(1 if split == "train" else 2, split).items())):
        _audio(split_dir, uid, tone(1.0 + 0.1 * i))
        lines.append(f"{uid}\t{text}\n".encode())
    (split_dir / "transcripts.txt").write_bytes(b"".join(lines))


def count_inputs(split_dir: Path) -> int:
    """What a reader is handed, counted independently of it: every non-blank transcript line,
    plus every audio entry whose name is not the first field of some line."""
    lines = [ln for ln in (split_dir / "transcripts.txt").read_bytes().splitlines() if ln.strip()]
    heads = {ln.split(b"\t", 1)[0].strip().decode("ascii", "replace") for ln in lines}
    audio = [p for p in (split_dir / "audio").glob("*/*/*.flac") if p.stem not in heads]
    return len(lines) + len(audio)


def write_fuzz_corpus(root: Path) -> dict:
    """mls_german/{train,dev} clean, test = 3 good utterances + every case; returns
    {"inputs": {split: n}, "good": [uids], "audio": {case: uid}, "transcript": {case: uid}}."""
    for split in ("train", "dev"):
        write_clean_split(root, split)
    split_dir = root / f"mls_{LANG}" / "test"
    lines: list[bytes] = []
    good = _good(3, "test")
    for uid, text in sorted(good.items()):
        _audio(split_dir, uid)
        lines.append(f"{uid}\t{text}".encode())
    audio_ids, text_ids = {}, {}
    for i, (name, write) in enumerate(AUDIO_CASES):
        uid = f"40_400_{i:06d}"
        path = split_dir / "audio" / "40" / "400" / f"{uid}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        lines.append(f"{uid}\taudio fall {name}".encode())
        audio_ids[name] = uid
    for i, (name, build) in enumerate(TRANSCRIPT_CASES):
        uid = f"50_500_{i:06d}"
        lines += build(split_dir, uid)
        text_ids[name] = uid
    (split_dir / "transcripts.txt").write_bytes(b"\n".join(lines) + b"\n")
    (root / f"mls_{LANG}" / "metainfo.txt").write_bytes(b"SPEAKER | GENDER\n\xff\xfe garbage | ?\n10 | F\n")
    inputs = {split: count_inputs(root / f"mls_{LANG}" / split) for split in ("train", "dev", "test")}
    return {"inputs": inputs, "good": sorted(good),
            "audio": audio_ids, "transcript": text_ids}
