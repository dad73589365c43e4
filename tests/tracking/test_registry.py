"""The registry with the micro speech-LLM: round trip by alias, lineage tags, and the champion gate
(the same run's CTC, then the champion, compared only on the same split, profile, data and a full set)."""

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
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    # the local-only flag: the `path` column is refused otherwise (a server must not read its own files)
    model = mlflow.pyfunc.load_model("models:/llm-asr@champion", model_config={serving.ALLOW_PATHS: True})
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


def _report(paths: Paths, system: str) -> dict:
    return json.loads((paths.reports / system / "metrics.json").read_text())


def test_the_micro_run_is_gated_on_its_own_measurements(micro_registry):
    import mlflow

    cfg, paths, reg = micro_registry
    llm, ctc = _report(paths, "speech_llm"), _report(paths, "ctc")
    assert (reg["version"], reg["champion_version"]) == (1, None)
    assert (reg["test_wer"], reg["ctc_wer"]) == (llm["average_wer"], ctc["average_wer"])
    assert (reg["split"], reg["skipped"]) == ("test", llm["skipped"])
    assert reg["data_sha"] == register.split_data_sha(paths, "test") != "none"
    if llm["average_wer"] < ctc["average_wer"]:
        assert reg["alias"] == "champion" and "no champion yet" in reg["reason"]
    else:
        assert reg["alias"] == "challenger"
        assert reg["reason"] == (f"speech-llm {llm['average_wer']:.2f}% does not beat the same run's ctc "
                                 f"{ctc['average_wer']:.2f}%; stays challenger")
    assert json.loads((paths.reports / "registration.json").read_text()) == reg
    mv = mlflow.MlflowClient(tracking_uri=cfg.tracking.tracking_uri).get_model_version("llm-asr", "1")
    assert mv.tags["gate_reason"] == reg["reason"]


def test_version_tags_carry_the_lineage(micro_registry):
    import mlflow

    cfg, paths, reg = micro_registry
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    mv = client.get_model_version("llm-asr", str(reg["version"]))
    run_tags = client.get_run(mv.run_id).data.tags  # the registering run's
    for key in ("git_sha", "dvc_lock_sha", "data_hash", "config_digest", "profile"):
        assert mv.tags[key] == run_tags[key]
    assert len(mv.tags["git_sha"]) == 40 and mv.tags["data_hash"] == tracking.data_hash(paths)
    assert json.loads(mv.tags["params"]) == json.loads(json.dumps(cfg.flat()))
    llm, ctc = _report(paths, "speech_llm"), _report(paths, "ctc")
    assert float(mv.tags["test_wer"]) == pytest.approx(llm["average_wer"], abs=1e-3)
    assert float(mv.tags["ctc_wer"]) == pytest.approx(ctc["average_wer"], abs=1e-3)
    utterances = sum(m["utterances"] for m in llm["languages"].values())
    assert {k: mv.tags[k] for k in ("split", "max_utterances_per_language", "skipped", "test_utterances",
                                    "data_sha", "test_wer_source")} == {
        "split": "test", "max_utterances_per_language": "0", "skipped": str(llm["skipped"]),
        "test_utterances": str(utterances), "data_sha": reg["data_sha"],
        "test_wer_source": "reports/speech_llm/metrics.json",  # no reports/metrics.json: the per-system files
    }
    assert mv.run_id == reg["run_id"]


def _write_metrics(paths: Paths, llm: dict, ctc: dict, llm_wer: float, ctc_wer: float) -> None:
    """reports/metrics.json as `llm-asr report` merges it, from the real micro JSONs with the given WERs.
    The gate reads the in-domain WERs of "speech-llm" and "ctc" (CTC + LM) only: not the LM-free
    "ctc-greedy", nor any "test_ood" score."""
    ood = {**llm, "average_wer": 1.0}
    merged = {"ctc": {**ctc, "average_wer": ctc_wer, "test_ood": ood},
              "ctc-greedy": {**ctc, "average_wer": 30.0},
              "speech-llm": {**llm, "average_wer": llm_wer, "test_ood": ood}}
    (paths.reports / "metrics.json").write_text(json.dumps(merged))


def test_champion_moves_only_past_the_same_runs_ctc_and_the_champion(micro_registry, empty_mlflow_db,
                                                                     tmp_path):
    import shutil

    import mlflow

    base_cfg, base, _ = micro_registry
    llm, ctc = _report(base, "speech_llm"), _report(base, "ctc")
    paths = Paths.at(workdir_sharing_models(base.workdir, tmp_path / "work"))
    paths.reports.mkdir()
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"tracking.tracking_uri={store}", "tracking.registered_model=llm-asr-gate"]
    cfg = load_config("micro", sets)

    _write_metrics(paths, llm, ctc, 50.0, 60.0)
    first = register.run(cfg, paths)
    assert (first["version"], first["alias"]) == (1, "champion")
    assert first["reason"] == "speech-llm 50.00% beats the same run's ctc 60.00%; no champion yet"

    _write_metrics(paths, llm, ctc, 65.0, 60.0)  # worse than its own ctc: through the CLI, which must say why
    args = ["register", "--profile", "micro", "--workdir", str(paths.workdir)]
    args += [arg for s in sets for arg in ("--set", s)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "does not beat the same run's ctc 60.00%" in " ".join(out.output.split())
    second = json.loads((paths.reports / "registration.json").read_text())
    assert (second["version"], second["alias"], second["champion_wer"]) == (2, "challenger", 50.0)

    _write_metrics(paths, llm, ctc, 42.0, 60.0)  # better than both
    third = register.run(cfg, paths)
    assert (third["version"], third["alias"]) == (3, "champion")
    assert third["reason"] == "speech-llm 42.00% beats the same run's ctc 60.00% and champion v1's 50.00%"
    client = mlflow.MlflowClient(tracking_uri=store)
    assert int(client.get_model_version_by_alias("llm-asr-gate", "champion").version) == 3
    challenger = client.get_model_version_by_alias("llm-asr-gate", "challenger")
    assert (int(challenger.version), challenger.tags["gate_reason"]) == (2, second["reason"])
    assert challenger.tags["test_wer_source"] == "reports/metrics.json"
    assert base_cfg.tracking.registered_model == "llm-asr"  # the shared registry was not touched


def _evaluation(system: str, wer: float, split: str = "test", per_language: int = 3, **extra) -> dict:
    """An evaluate-stage JSON (the shape `llm_asr.stages.evaluate.run` writes) with average WER `wer`."""
    langs = {lang: {"wer": wer, "cer": wer / 3, "utterances": per_language} for lang in ("german", "polish")}
    return {"system": system, "model": f"models/{system}", "average_wer": wer, "languages": langs,
            "split": split, "data_dir": "data/corpus", "skipped": 0, "decoding": "greedy", **extra}


@pytest.fixture
def gate_store(mlflow_store, tmp_path):
    """A workdir with test manifests, and a registered model with no version yet, in a real store."""
    import mlflow

    paths = Paths.at(tmp_path / "work")
    paths.manifests.mkdir(parents=True)
    (paths.manifests / "cuts_test.jsonl.gz").write_bytes(b"the test cuts")
    client = mlflow.MlflowClient()
    client.create_registered_model("llm-asr-gate")
    return paths, client


def _candidate(paths: Paths, llm: dict, ctc: dict | None, sets: tuple[str, ...] = ()) -> dict[str, str]:
    cfg = load_config("micro", list(sets))
    return {**register.lineage_tags(cfg, tracking.run_tags(cfg, paths), "reports/metrics.json"),
            **register.evaluation_tags(cfg, paths, llm, ctc)}


def _champion(client, paths: Paths, wer: float, **differs: str | None):
    """Version 1, aliased champion: a version the gate accepted at `wer`, but for the tags in DIFFERS
    (None: the tag is missing, as on a version registered before the gate)."""
    tags = {**_candidate(paths, _evaluation("speech-llm", wer), _evaluation("ctc", 90.0)), **differs}
    tags = {k: v for k, v in tags.items() if v is not None}
    version = client.create_model_version("llm-asr-gate", "runs:/0/model", tags=tags)
    client.set_registered_model_alias("llm-asr-gate", "champion", version.version)
    return register._current_champion(client, "llm-asr-gate", "champion")


LLM, CTC = _evaluation("speech-llm", 20.0), _evaluation("ctc", 30.0)
CHAMPION = (25.0, {})  # (its test WER, its tags that differ from the new version's)


@pytest.mark.parametrize(
    "llm, ctc, champion, sets, alias, says",
    [
        pytest.param(LLM, CTC, None, (), "champion",
                     "speech-llm 20.00% beats the same run's ctc 30.00%; no champion yet", id="first"),
        pytest.param(LLM, CTC, CHAMPION, (), "champion",
                     "speech-llm 20.00% beats the same run's ctc 30.00% and champion v1's 25.00%",
                     id="accept"),
        pytest.param(_evaluation("speech-llm", 35.0), CTC, None, (), "challenger",
                     "speech-llm 35.00% does not beat the same run's ctc 30.00%; stays challenger",
                     id="worse-than-same-run-ctc"),
        pytest.param(_evaluation("speech-llm", 30.0), CTC, CHAMPION, (), "challenger",
                     "speech-llm 30.00% does not beat the same run's ctc 30.00%", id="ties-same-run-ctc"),
        pytest.param(LLM, None, None, (), "challenger", "no ctc baseline", id="no-ctc-baseline"),
        pytest.param(LLM, _evaluation("ctc", 30.0, per_language=2), None, (), "challenger",
                     "ctc was scored on test (4 utterances), speech-llm on test (6)", id="ctc-on-a-subset"),
        pytest.param(LLM, CTC, (18.0, {}), (), "challenger",
                     "speech-llm 20.00% beats the same run's ctc but not champion v1's 18.00%; stays "
                     "challenger",
                     id="worse-than-champion"),
        pytest.param(LLM, CTC, (20.0, {}), (), "challenger", "not champion v1's 20.00%", id="ties-champion"),
        pytest.param(LLM, CTC, (25.0, {"split": "dev"}), (), "challenger",
                     "champion v1 has split dev, this version test: their WERs are not comparable",
                     id="different-split"),
        pytest.param(LLM, CTC, (25.0, {"profile": "default"}), (), "challenger",
                     "champion v1 has profile default, this version micro", id="different-profile"),
        pytest.param(LLM, CTC, (25.0, {"data_sha": "0123456789abcdef"}), (), "challenger",
                     "champion v1 has data_sha 0123456789abcdef, this version", id="different-data-hash"),
        pytest.param(LLM, CTC, (25.0, {"split": None, "data_sha": None}), (), "challenger",
                     "champion v1 has split (none), this version test", id="champion-from-before-the-gate"),
        pytest.param(LLM, CTC, None, ("evaluate.max_utterances_per_language=1",), "challenger",
                     "a subset (evaluate.max_utterances_per_language=1), not the full test split",
                     id="subset-evaluation"),
        pytest.param({k: v for k, v in LLM.items() if k != "skipped"}, CTC, None, (), "challenger",
                     "do not record how many utterances were skipped", id="skipped-not-recorded"),
    ],
)
def test_the_gate_against_the_same_runs_ctc_and_the_champion(llm, ctc, champion, sets, alias, says,
                                                             gate_store):
    paths, client = gate_store
    current = _champion(client, paths, champion[0], **champion[1]) if champion else None
    got, reason = register.decide(_candidate(paths, llm, ctc, sets), ctc, current, load_config("micro"))
    assert (got, says in reason, "\n" in reason) == (alias, True, False), reason


def test_a_split_without_manifests_has_no_data_sha(tmp_path):
    paths = Paths.at(tmp_path)
    assert register.split_data_sha(paths, "test") == "none"
    alias, reason = register.decide(_candidate(paths, LLM, CTC), CTC, None, load_config("micro"))
    assert (alias, reason) == ("challenger", "no test manifests under data/manifests: "
                               "the evaluated data is unknown; stays challenger")
