"""Bad-input fuzzing: every malformed case (tests/reliability/fuzz_cases.py) through prepare-data
(mls source, loopback archive server), extract-features, evaluate, transcribe and the served
model. Each case ends in a clear error or a counted skip: no crash, and per stage
inputs == processed + skipped (no silent drop)."""

from __future__ import annotations

import http.server
import json
import tarfile
import threading
from pathlib import Path

import pandas as pd
import pytest
from lhotse import CutSet
from mlflow.exceptions import MlflowException

from llm_asr.config import load_config
from llm_asr.paths import Paths
from tests.fixtures.data import RangeHandler
from tests.reliability.fuzz_cases import (
    AUDIO_CASES,
    CORPUS_OK,
    INFERENCE_OK,
    LANG,
    PATH_CASES,
    SERVED_OK,
    SERVING_CASES,
    TRANSCRIPT_CASES,
    write_fuzz_corpus,
)

pytestmark = pytest.mark.integration
SPLITS = ("train", "dev", "test")


def test_the_generator_makes_at_least_50_cases():
    assert len(AUDIO_CASES) + len(TRANSCRIPT_CASES) >= 50
    assert len({n for n, _ in AUDIO_CASES + TRANSCRIPT_CASES}) == len(AUDIO_CASES) + len(TRANSCRIPT_CASES)


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    """prepare-data from a served mls_german.tar.gz holding every case, then extract-features."""
    from llm_asr.data.download import sha256_file
    from llm_asr.stages import extract_features, prepare_data

    root = tmp_path_factory.mktemp("fuzz")
    expected = write_fuzz_corpus(root / "src")
    (root / "serve").mkdir()
    archive = root / "serve" / f"mls_{LANG}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "src" / f"mls_{LANG}", arcname=f"mls_{LANG}")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler(archive.parent).handler())
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cfg = load_config("micro", [
        "data.source=mls", f"data.languages=[{LANG}]", f"data.mls.base_url=http://127.0.0.1:{srv.server_address[1]}",
        f"data.mls.sha256={{{LANG}: {sha256_file(archive)}}}",
    ])
    paths = Paths.at(root / "work")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LLM_ASR_CACHE", str(root / "cache"))
            prepared = prepare_data.run(cfg, paths)
    finally:
        srv.shutdown()
        srv.server_close()
    featured = extract_features.run(cfg, paths)
    return cfg, paths, expected, prepared, featured


def _by_case(expected: dict) -> dict[str, str]:
    return {uid: name for kind in ("audio", "transcript") for name, uid in expected[kind].items()}


def test_prepare_data_accounts_for_every_input(fuzz_run):
    cfg, paths, expected, prepared, _ = fuzz_run
    report = json.loads((paths.reports / "data_report.json").read_text())
    for split in SPLITS:
        kept = {c.id for c in CutSet.from_file(paths.manifests / f"cuts_{split}.jsonl.gz")}
        skipped = [s for s in report["skipped"] if s["split"] == split]
        assert len(kept) == report["total"][split]["utterances"]
        assert expected["inputs"][split] == len(kept) + len(skipped), split  # no silent drop
        assert all(s["reason"] for s in skipped)
    test_kept = {c.id for c in CutSet.from_file(paths.manifests / "cuts_test.jsonl.gz")}
    assert set(expected["good"]) <= test_kept
    for name, uid in expected["audio"].items():
        assert (uid in test_kept) == (name in CORPUS_OK), name
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    assert "longer than 60 s" in reasons[expected["audio"]["one-hour"]]
    assert "not UTF-8" in reasons[expected["transcript"]["latin1-text"]]
    assert "duplicate id" in reasons[expected["transcript"]["duplicate-id-other-text"]]
    assert "without audio" in reasons[expected["transcript"]["id-without-audio"]]
    assert prepared["num_skipped"] == len(report["skipped"])


def test_extract_features_accounts_for_every_cut(fuzz_run):
    _, paths, _, _, featured = fuzz_run
    for split in SPLITS:
        inputs = len(CutSet.from_file(paths.manifests / f"cuts_{split}.jsonl.gz"))
        skipped = [s for s in featured["skipped"] if s["split"] == split]
        assert featured["cuts"][split] + len(skipped) == inputs, split
        assert featured["cuts"][split] == len(CutSet.from_file(paths.features / f"cuts_{split}.jsonl.gz"))


def test_extract_features_skips_audio_that_vanished_and_counts_it(fuzz_run, tmp_path):
    """Audio deleted between prepare-data and extract-features: a counted skip, not a crash."""
    import shutil

    from llm_asr.stages import extract_features

    cfg, src, _, _, _ = fuzz_run
    paths = Paths.at(tmp_path)
    shutil.copytree(src.workdir / "data" / "corpus", paths.corpus)
    shutil.copytree(src.workdir / "data" / "manifests", paths.manifests)
    gone = next(iter(CutSet.from_file(paths.manifests / "cuts_test.jsonl.gz")))
    (paths.workdir / gone.recording.sources[0].source).unlink()
    result = extract_features.run(cfg, paths)
    assert [s["id"] for s in result["skipped"]] == [gone.id]
    assert json.loads((paths.features / "skipped.json").read_text())[0]["id"] == gone.id


@pytest.mark.parametrize("system", ["ctc", "speech-llm"])
def test_evaluate_on_the_fuzz_dir_counts_every_utterance(fuzz_run, micro_speech_llm, system, tmp_path):
    from llm_asr.stages import evaluate

    cfg, paths, expected, _, _ = fuzz_run
    _, model_paths = micro_speech_llm
    model = model_paths.ctc_model if system == "ctc" else model_paths.speech_llm_model
    result = evaluate.run(cfg, Paths.at(tmp_path), data_dir=paths.corpus, model=str(model), system=system,
                          out=tmp_path / "metrics.json")
    decoded = sum(v["utterances"] for v in result["languages"].values())
    assert decoded + result["skipped"] == expected["inputs"]["test"]
    assert decoded == 3 + len(CORPUS_OK) + sum(  # good + valid audio + acceptable transcript oddities
        1 for n in ("duplicate-id-same-text", "duplicate-id-other-text", "extra-tabs", "very-long-text",
                    "nul-and-control-chars", "upper-case-and-digits", "emoji-and-rtl", "crlf-line-end"))


def _audio_files(root, cases=AUDIO_CASES) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, write in cases:
        path = root / f"{name}.flac"
        write(path)
        files[name] = str(path)
    return files


def test_transcribe_every_audio_case(micro_ctc, tmp_path):
    """`llm-asr transcribe` (CTC model: the one-hour file decodes in windows): a text or an error line
    for every file, in order; the CLI exits 2 when any file failed."""
    from typer.testing import CliRunner

    from llm_asr.cli import app
    from llm_asr.inference import transcribe_files

    cfg, paths, _ = micro_ctc
    files = _audio_files(tmp_path / "audio")
    lines = list(transcribe_files(cfg, paths, list(files.values()), model=str(paths.ctc_model)))
    assert [ln["audio"] for ln in lines] == list(files.values())
    for name, line in zip(files, lines):
        assert ("text" in line) == (name in INFERENCE_OK), (name, line)
        assert "text" in line or line["error"], name
    short = [files["stereo"], files["empty-file"], files["rate-8000"]]
    res = CliRunner().invoke(app, ["transcribe", *short, "--model", str(paths.ctc_model), "--profile", "micro"])
    assert res.exit_code == 2 and len(res.stdout.strip().splitlines()) == 3, res.output


def test_served_model_answers_every_audio_case_with_text_or_a_400(micro_registry, tmp_path, monkeypatch):
    """The registered pyfunc in served mode: text for usable audio, HTTP-400 errors for the rest,
    including the server's own hazards (header bombs, odd rates, many channels) and every file path."""
    import mlflow

    from llm_asr.serving import SERVING_ENV

    cfg, paths, _ = micro_registry
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.registered_model}@champion")
    monkeypatch.setenv(SERVING_ENV, "true")
    files = {**_audio_files(tmp_path / "audio"), **_audio_files(tmp_path / "serving", SERVING_CASES)}
    answered = rejected = 0
    for name, path in files.items():
        data = open(path, "rb").read() if not Path(path).is_dir() else b""
        try:
            out = model.predict(pd.DataFrame({"audio": [data]}))
            assert isinstance(out["text"][0], str)
            answered += 1
            assert name in SERVED_OK, name
        except MlflowException as e:
            assert e.get_http_status_code() == 400 and str(e), name
            rejected += 1
            assert name not in SERVED_OK, (name, str(e))
    assert answered + rejected == len(AUDIO_CASES) + len(SERVING_CASES)
    for path in [str(paths.workdir / "mlflow.db"), files["stereo"], *PATH_CASES]:
        with pytest.raises(MlflowException, match="file paths are not accepted"):
            model.predict(pd.DataFrame({"path": [path]}))
