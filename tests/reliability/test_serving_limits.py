"""The scoring server's input checks without a model: headers are judged before any audio is decoded,
only recorder sample rates pass, file paths need the local-only flag, and the logged model brings
its own code and a minimal set of pinned requirements.

The served model itself meets the same cases in tests/reliability/test_bad_input.py.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from llm_asr import serving
from llm_asr.config import REPO_ROOT, TrackingConfig
from tests.reliability.fuzz_cases import AUDIO_CASES, PATH_CASES, SERVED_OK, SERVING_CASES, flac_bytes, tone

LIMITS = TrackingConfig()  # the logged defaults: 300 s per clip, 64 clips, 25 MB


def _written(tmp_path: Path, cases) -> dict[str, Path]:
    files = {}
    for name, write in cases:
        path = tmp_path / f"{name}.flac"
        write(path)
        files[name] = path
    return files


def _refused(frame: pd.DataFrame, allow_paths: bool = False) -> str:
    with pytest.raises(MlflowException) as err:
        serving.decode_inputs(frame, LIMITS, allow_paths=allow_paths)
    assert err.value.get_http_status_code() == 400
    return str(err.value)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if a clip is decoded: these must be refused from the header alone."""
    from llm_asr.data import audio

    def refuse(*args, **kwargs):
        raise AssertionError("decoded a clip the header should have refused")

    monkeypatch.setattr(audio, "load_audio_bytes", refuse)
    monkeypatch.setattr(audio, "load_audio", refuse)


@pytest.mark.parametrize("case", [n for n, _ in SERVING_CASES])
def test_serving_cases_are_refused_from_the_header(case, tmp_path, no_decoding):
    data = _written(tmp_path, SERVING_CASES)[case].read_bytes()
    assert len(data) < 2**20  # small payloads: the danger is in what they claim
    message = _refused(pd.DataFrame({"audio": [data]}))
    assert message.startswith("row 0: ") and ("sample rate" in message or "channels" in message
                                              or "from its header" in message or "no length" in message)
    # and what to do about it
    assert any(fix in message for fix in ("resample the clip", "downmix the clip", "split it", "send a whole")), message


def test_a_header_claiming_hours_is_refused_by_duration(tmp_path, no_decoding):
    data = _written(tmp_path, SERVING_CASES)["flac-header-claims-10-hours"].read_bytes()
    assert "36000 s of audio; the limit is 300.0 s (from its header)" in _refused(pd.DataFrame({"audio": [data]}))


def test_a_header_claiming_less_than_the_stream_holds_bounds_what_is_decoded():
    """The other bomb: a header that passes the checks over a stream of much more audio. The decoder
    reads no more frames than the header states, so memory stays within max_audio_s."""
    from tests.reliability.fuzz_cases import _flac_claiming

    data = _flac_claiming(16000, seconds=60.0)  # the header says 1 s; the stream holds 60 s
    (wave,) = serving.decode_inputs(pd.DataFrame({"audio": [data]}), LIMITS, allow_paths=False)
    assert len(wave) == 16000


@pytest.mark.parametrize("rate", serving.RECORDER_RATES)
def test_every_recorder_rate_is_accepted(rate):
    (wave,) = serving.decode_inputs(pd.DataFrame({"audio": [flac_bytes(tone(1.0, sr=rate), sr=rate)]}), LIMITS, False)
    assert len(wave) == 16000


def test_the_audio_fuzz_cases_get_text_or_a_400(tmp_path):
    files = _written(tmp_path, AUDIO_CASES)
    accepted = set()
    for name, path in files.items():
        data = b"" if path.is_dir() else path.read_bytes()
        try:
            serving.decode_inputs(pd.DataFrame({"audio": [data]}), LIMITS, allow_paths=False)
            accepted.add(name)
        except MlflowException as e:
            assert e.get_http_status_code() == 400 and str(e), name
    assert accepted == SERVED_OK


@pytest.mark.parametrize("path", PATH_CASES)
def test_paths_are_refused_without_the_local_only_flag(path):
    assert "file paths are not accepted" in _refused(pd.DataFrame({"path": [path]}))


def test_with_the_local_only_flag_paths_read_audio_and_still_meet_the_header_checks(tmp_path):
    good = tmp_path / "good.flac"
    good.write_bytes(flac_bytes(tone(1.0)))
    assert "file paths are not accepted" in _refused(pd.DataFrame({"path": [str(good)]}))
    (wave,) = serving.decode_inputs(pd.DataFrame({"path": [str(good)]}), LIMITS, allow_paths=True)
    assert len(wave) == 16000
    bomb = _written(tmp_path, SERVING_CASES)["flac-header-claims-10-hours"]
    assert "from its header" in _refused(pd.DataFrame({"path": [str(bomb)]}), allow_paths=True)
    assert "no such audio file" in _refused(pd.DataFrame({"path": [str(tmp_path / "missing.flac")]}), True)


def test_the_model_pins_only_what_serving_imports():
    reqs = serving.serving_requirements()
    assert [r.split("==")[0] for r in reqs] == list(serving.SERVING_PACKAGES)
    assert all("==" in r for r in reqs), "every serving package is pinned in requirements.lock"
    assert not {"kfp", "dvc", "kubeflow", "boto3", "matplotlib"} & {r.split("==")[0] for r in reqs}
    assert serving.serving_requirements(Path("/nonexistent.lock")) == list(serving.SERVING_PACKAGES)


def _imports_reachable_from(module: str) -> set[str]:
    """Top-level third-party modules that llm_asr modules reachable from MODULE import (any scope)."""
    src = REPO_ROOT / "src"
    seen, todo, found = set(), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = next((p for p in (src / f"{name.replace('.', '/')}.py", src / name.replace(".", "/") / "__init__.py")
                     if p.is_file()), None)
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                if n.startswith("llm_asr"):
                    todo.append(n)
                elif n.split(".")[0] not in sys.stdlib_module_names:
                    found.add(n.split(".")[0])
    return found


def test_every_import_of_the_served_code_has_a_requirement():
    dists = {d.replace("-", "_") for d in serving.SERVING_PACKAGES} | {"yaml"}  # pyyaml installs yaml
    missing = _imports_reachable_from("llm_asr.serving") | _imports_reachable_from("llm_asr.decoding.speech_llm")
    assert missing - dists == set()


def test_the_package_staged_as_code_paths_is_llm_asr_without_bytecode(tmp_path):
    package = serving._stage_package(tmp_path / "code")
    assert package == tmp_path / "code" / "llm_asr"
    assert (package / "serving.py").read_text() == Path(serving.__file__).read_text()
    assert not list(package.rglob("__pycache__")) and not list(package.rglob("*.pyc"))


@pytest.mark.integration
def test_the_registered_model_carries_its_code_and_minimal_requirements(micro_registry, tmp_path):
    import mlflow
    import yaml

    cfg, paths, _ = micro_registry
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{cfg.tracking.registered_model}@champion",
                                                     dst_path=str(tmp_path)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert (local / flavor["code"] / "llm_asr" / "serving.py").is_file()
    assert flavor["config"][serving.ALLOW_PATHS] is False  # MLmodel keeps model_config as `config`
    lines = {ln.strip() for ln in (local / "requirements.txt").read_text().splitlines() if ln.strip()}
    assert set(serving.serving_requirements()) <= lines
    assert not [ln for ln in lines if ln.split("==")[0] in ("kfp", "dvc", "kubeflow")]
    clip = sorted(paths.corpus.glob("mls_*/test/audio/*/*/*.flac"))[0]
    flagged = mlflow.pyfunc.load_model(str(local), model_config={serving.ALLOW_PATHS: True})
    assert isinstance(flagged.predict(pd.DataFrame({"path": [str(clip)]}))["text"][0], str)
    with pytest.raises(MlflowException, match="file paths are not accepted"):
        mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"path": [str(clip)]}))
