"""The registry with the micro speech-LLM: round trip by alias, lineage tags, the champion gate both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from llm_asr import serving, tracking
from llm_asr.config import load_config
from llm_asr.cli import app
from llm_asr.inference import load_recognizer
from llm_asr.paths import Paths
from llm_asr.stages import register
from tests.fixtures.tracking import workdir_sharing_models

pytestmark = pytest.mark.integration


def test_clips(paths: Paths, n: int = 2) -> list[Path]:
    return sorted(paths.corpus.glob("mls_*/test/audio/*/*/*.flac"))[:n]


test_clips.__test__ = False  # a helper, not a test


def test_champion_round_trip_transcribes_test_audio(micro_registry):
    import mlflow
    from llm_asr.data.audio import load_audio

    cfg, paths, reg = micro_registry
    assert (reg["version"], reg["alias"], reg["champion_version"]) == (1, "champion", None)
    assert json.loads((paths.reports / "registration.json").read_text()) == reg
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/llm-asr@champion")
    clips = test_clips(paths)
    by_bytes = serving.transcribe_bytes(model, [c.read_bytes() for c in clips])
    by_path = list(model.predict(pd.DataFrame({"path": [str(c) for c in clips]}))["text"])
    direct = load_recognizer(cfg, paths, "speech-llm", paths.speech_llm_model).transcribe(
        [load_audio(c) for c in clips]
    )
    assert by_bytes == by_path == direct and all(isinstance(t, str) for t in direct)
    assert model.metadata.get_input_schema().input_names() == ["audio", "path"]


def test_models_uri_resolves_to_the_packaged_model_dir(micro_registry):
    cfg, paths, _ = micro_registry
    model_dir = tracking.download_model_dir(cfg, paths, "models:/llm-asr@champion")
    packaged = {p.name for p in model_dir.iterdir()}
    assert "config.json" in packaged and "checkpoints" not in packaged  # training state stays out
    assert (model_dir.parents[1] / "serving_input_example.json").is_file()
    assert sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()) < 20e6  # no LLM copy
    # one cache entry per version, whichever way it is named
    assert tracking.download_model_dir(cfg, paths, "models:/llm-asr/1") == model_dir
    clip = test_clips(paths, 1)
    from llm_asr.data.audio import load_audio

    recognizer = load_recognizer(cfg, paths, "speech-llm", "models:/llm-asr@champion")
    text = recognizer.transcribe([load_audio(clip[0])])
    assert isinstance(text[0], str)


def test_version_tags_carry_the_lineage(micro_registry):
    import mlflow

    cfg, paths, reg = micro_registry
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    mv = client.get_model_version("llm-asr", str(reg["version"]))
    run_tags = client.get_run(mv.run_id).data.tags  # the registering run's
    for key in ("git_sha", "dvc_lock_sha", "data_hash", "config_digest"):
        assert mv.tags[key] == run_tags[key]
    assert len(mv.tags["git_sha"]) == 40 and mv.tags["data_hash"] == tracking.data_hash(paths)
    assert json.loads(mv.tags["params"]) == json.loads(json.dumps(cfg.flat()))
    wer = json.loads((paths.reports / "speech_llm" / "metrics.json").read_text())["average_wer"]
    assert float(mv.tags["test_wer"]) == pytest.approx(wer, abs=1e-3)
    assert mv.run_id == reg["run_id"] and "first version" in mv.tags["registration"]


def _set_wer(paths: Paths, wer: float) -> None:
    out = paths.reports / "speech_llm" / "metrics.json"
    data = json.loads(out.read_text())
    out.write_text(json.dumps({**data, "average_wer": wer}))


def test_champion_moves_only_for_a_lower_test_wer(micro_registry, empty_mlflow_db, tmp_path):
    import shutil

    import mlflow

    base_cfg, base, _ = micro_registry
    paths = Paths.at(workdir_sharing_models(base.workdir, tmp_path / "work"))
    (paths.reports / "speech_llm").mkdir(parents=True)
    metrics = Path("speech_llm") / "metrics.json"
    shutil.copyfile(base.reports / metrics, paths.reports / metrics)
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"tracking.tracking_uri={store}", "tracking.registered_model=llm-asr-gate"]
    cfg = load_config("micro", sets)

    _set_wer(paths, 50.0)
    first = register.run(cfg, paths)
    assert (first["version"], first["alias"]) == (1, "champion")

    _set_wer(paths, 55.0)  # worse: through the CLI, which must say why
    args = ["register", "--profile", "micro", "--workdir", str(paths.workdir)]
    args += [arg for s in sets for arg in ("--set", s)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "does not beat champion v1's 50.00%" in out.output
    second = json.loads((paths.reports / "registration.json").read_text())
    assert (second["version"], second["alias"], second["champion_wer"]) == (2, "challenger", 50.0)

    _set_wer(paths, 42.0)  # better
    third = register.run(cfg, paths)
    assert (third["version"], third["alias"]) == (3, "champion")
    assert "beats champion v1's 50.00%" in third["reason"]
    client = mlflow.MlflowClient(tracking_uri=store)
    assert int(client.get_model_version_by_alias("llm-asr-gate", "champion").version) == 3
    assert int(client.get_model_version_by_alias("llm-asr-gate", "challenger").version) == 2
    assert base_cfg.tracking.registered_model == "llm-asr"  # the shared registry was not touched


def _version(wer: str | None, data_hash: str = "d1"):
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    tags = {"data_hash": data_hash, **({"test_wer": wer} if wer is not None else {})}
    return ModelVersion("llm-asr", "7", 0, tags=[ModelVersionTag(k, v) for k, v in tags.items()])


@pytest.mark.parametrize(
    "wer, champion, alias, says",
    [
        (30.0, None, "champion", "no champion yet"),
        (30.0, _version("31.0"), "champion", "beats champion v7's 31.00%"),
        (31.0, _version("31.0"), "challenger", "does not beat champion v7's 31.00%"),  # a tie keeps it
        (32.0, _version("31.0"), "challenger", "does not beat"),
        (30.0, _version(None), "champion", "has no test_wer tag"),
        (30.0, _version("31.0", "other"), "champion", "evaluated on different data"),
    ],
)
def test_the_gate_decides_on_test_wer(wer, champion, alias, says):
    got, reason = register.decide(wer, champion, load_config("micro"), "d1")
    assert got == alias and says in reason
