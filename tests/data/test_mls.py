"""read_mls_dir on MLS-layout fixtures (good and bad input), and the mls source end to end
through a loopback HTTP server (resumable, verified download; never the real network)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from llm_asr.config import load_config
from llm_asr.data.download import download
from llm_asr.data.mls import read_mls_dir
from llm_asr.errors import UserError
from llm_asr.paths import Paths
from tests.fixtures.data import RangeHandler, tone, write_mls_layout

GOOD = {
    "10_100_000000": "guten morgen",
    "10_100_000001": "wie geht es dir",
    "11_110_000000": "ich lese ein buch",
}


def _damaged_split(root):
    """German test split with one utterance of every bad kind beside three good ones."""
    bad_ids = {f"12_120_00000{i}": f"satz nummer {w}" for i, w in enumerate("abcdefgh")}
    split = write_mls_layout(root, "german", "test", {**GOOD, **bad_ids})
    audio = lambda uid: split / "audio" / "12" / "120" / f"{uid}.flac"
    audio("12_120_000000").write_bytes(b"this is not audio at all" * 20)  # corrupt
    audio("12_120_000001").write_bytes(b"")  # empty
    data = audio("12_120_000002").read_bytes()
    audio("12_120_000002").write_bytes(data[: len(data) // 2])  # truncated
    sf.write(audio("12_120_000003"), tone(1.0, sr=8000), 8000, format="FLAC")  # wrong rate
    sf.write(audio("12_120_000004"), tone(1.0, channels=2), 16000, format="FLAC")  # stereo
    nan = tone(1.0)
    nan[100] = np.nan
    sf.write(audio("12_120_000005"), nan, 16000, format="WAV", subtype="FLOAT")  # NaN (float WAV named .flac)
    audio("12_120_000006").unlink()  # id without audio
    sf.write(
        split / "audio" / "12" / "120" / "12_120_000099.flac", tone(1.0), 16000, format="FLAC"
    )  # audio without id
    lines = (split / "transcripts.txt").read_bytes().splitlines(keepends=True)
    lines = [ln.replace(b"satz nummer h", b"") for ln in lines]  # 000007: empty transcript
    lines.append(b"11_110_000000\tnoch einmal\n")  # duplicate id
    lines.append("10_100_000002\tgr\xfc\xdfe\n".encode("latin-1"))  # non-UTF-8
    (split / "transcripts.txt").write_bytes(b"".join(lines))
    sf.write(split / "audio" / "10" / "100" / "10_100_000002.flac", tone(1.0), 16000, format="FLAC")
    return split


EXPECTED_REASONS = {
    "12_120_000000": "corrupt or not audio",
    "12_120_000001": "empty file",
    "12_120_000002": "truncated",
    "12_120_000003": "wrong sample rate 8000",
    "12_120_000004": "2 channels",
    "12_120_000005": "NaN or inf samples",
    "12_120_000006": "transcript id without audio",
    "12_120_000099": "audio without a transcript",
    "12_120_000007": "empty transcript",
    "11_110_000000": "duplicate id",
    "10_100_000002": "not UTF-8",
}


def test_read_clean_mls_dir(tmp_path):
    write_mls_layout(tmp_path, "german", "test", GOOD)
    items, skipped = read_mls_dir(tmp_path, "test")
    assert skipped == []
    assert [(i.id, i.language, i.text) for i in items] == [(k, "german", v) for k, v in sorted(GOOD.items())]
    assert items[0].audio_path.is_file() and items[0].num_samples == 16000 and items[0].gender == "F"


def test_every_bad_input_is_skipped_with_its_reason(tmp_path):
    _damaged_split(tmp_path)
    items, skipped = read_mls_dir(tmp_path, "test", num_workers=1)
    assert sorted(i.id for i in items) == sorted(GOOD)
    assert next(i for i in items if i.id == "11_110_000000").text == GOOD["11_110_000000"]  # first kept
    reasons = {s["id"]: s["reason"] for s in skipped}
    for uid, fragment in EXPECTED_REASONS.items():
        assert fragment in reasons.get(uid, ""), (uid, reasons.get(uid))
    assert len(skipped) == len(EXPECTED_REASONS)


def test_nothing_usable_is_a_clear_error(tmp_path):
    split = write_mls_layout(tmp_path, "polish", "dev", {"1_1_000000": "tak"})
    (split / "audio" / "1" / "1" / "1_1_000000.flac").write_bytes(b"")
    with pytest.raises(UserError, match="no usable 'dev' utterances.*empty file"):
        read_mls_dir(tmp_path, "dev")
    with pytest.raises(UserError, match="no MLS-layout folders"):
        read_mls_dir(tmp_path / "nowhere", "dev")


def test_only_requested_languages_and_split(tmp_path):
    write_mls_layout(tmp_path, "german", "test", GOOD)
    write_mls_layout(tmp_path, "french", "test", {"20_200_000000": "bonjour"})
    items, _ = read_mls_dir(tmp_path, "test", languages=["french"])
    assert [(i.id, i.language) for i in items] == [("20_200_000000", "french")]


def _archive(tmp_path, language="german"):
    src = tmp_path / "src"
    for split in ("train", "dev"):
        write_mls_layout(src, language, split, {f"3{n}_1_00000{n}": f"{split} satz {n}" for n in range(3)})
    _damaged_split(src)  # the test split carries every kind of bad input
    serve = tmp_path / "serve"
    serve.mkdir()
    with tarfile.open(serve / f"mls_{language}.tar.gz", "w:gz") as tar:
        tar.add(src / f"mls_{language}", arcname=f"mls_{language}")
    return serve / f"mls_{language}.tar.gz"


def test_resumable_download_after_a_dropped_connection(tmp_path, http_server):
    archive = _archive(tmp_path)
    server = RangeHandler(archive.parent, truncate_first=True)
    url = f"{http_server(server)}/{archive.name}"
    dest = tmp_path / "cache" / archive.name
    with pytest.raises(UserError, match="run again to resume"):
        download(url, dest)
    assert (
        not dest.exists()
        and 0 < (dest.parent / (dest.name + ".part")).stat().st_size < archive.stat().st_size
    )
    got = download(url, dest)
    assert server.requests[1][1].startswith("bytes=") and server.requests[1][1] != "bytes=0-"
    assert dest.read_bytes() == archive.read_bytes() and got["downloaded"]


def test_checksum_mismatch_is_rejected(tmp_path, http_server):
    archive = _archive(tmp_path)
    url = f"{http_server(RangeHandler(archive.parent))}/{archive.name}"
    with pytest.raises(UserError, match="does not match"):
        download(url, tmp_path / "c" / archive.name, sha256="0" * 64)
    with pytest.raises(UserError, match="HTTP 404"):
        download(url + ".missing", tmp_path / "c" / "x.tar.gz")


def test_prepare_data_from_mls_archives(tmp_path, http_server, monkeypatch):
    from llm_asr.data.download import sha256_file
    from llm_asr.stages import prepare_data

    archive = _archive(tmp_path)
    base = http_server(RangeHandler(archive.parent))
    monkeypatch.setenv("LLM_ASR_CACHE", str(tmp_path / "cache"))
    cfg = load_config(
        "micro",
        [
            "data.source=mls",
            "data.languages=[german]",
            f"data.mls.base_url={base}",
            f"data.mls.sha256={{german: {sha256_file(archive)}}}",
        ],
    )
    paths = Paths.at(tmp_path / "work")
    prepare_data.run(cfg, paths)
    report = json.loads((paths.reports / "data_report.json").read_text())
    assert report["languages"]["german"]["train"]["utterances"] == 3
    assert report["languages"]["german"]["test"]["utterances"] == len(GOOD)
    assert {s["id"] for s in report["skipped"]} == set(EXPECTED_REASONS)
    assert all(s["split"] == "test" and s["language"] == "german" for s in report["skipped"])
    assert (paths.manifests / "mls-german_supervisions_test.jsonl.gz").is_file()
