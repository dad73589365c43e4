"""Micro profile end to end: prepare -> features -> train-ctc -> evaluate (the JSON contract)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from llm_asr.config import LANGUAGES
from llm_asr.decoding.ctc import CtcRecognizer
from llm_asr.errors import UserError
from llm_asr.evaluation import metrics_json
from llm_asr.models.encoder import load_ctc_model
from llm_asr.stages import evaluate
from llm_asr.training.checkpoint import load_state_strict

pytestmark = pytest.mark.integration


def test_model_dir_contents_and_strict_load(micro_ctc):
    cfg, paths, summary = micro_ctc
    out = paths.ctc_model
    for name in ("model.pt", "config.json", "tokenizer.model", "cmvn.json", "curves.json", "curves.png",
                 "dev_metrics.json", "lm.arpa", "lexicon.txt"):
        assert (out / name).is_file(), name
    assert summary["steps"] == cfg.ctc.train.max_steps
    model, tok, cfg_dict = load_ctc_model(out)
    assert cfg_dict["ctc"]["encoder"]["d_model"] == cfg.ctc.encoder.d_model
    assert model.ctc_head.out_features == tok.num_classes
    state = torch.load(out / "model.pt", weights_only=True)
    state["ctc_head.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="unexpected"):
        load_state_strict(model, state)


def test_lm_text_and_decoding_switch(micro_ctc):
    """The LM reads the corpus' lm_text.txt (never a dev/test sentence) when ctc.lm.text=corpus;
    ctc.lm.weight picks LM beam search or plain CTC decoding for the same model directory."""
    from llm_asr.config import load_config
    from llm_asr.decoding.lm import ArpaModel
    from llm_asr.stages.train_ctc import lm_texts

    cfg, paths, summary = micro_ctc
    assert summary["lm_sentences"] == 8 * cfg.data.synthetic.train_per_language  # micro: text=train
    texts, extra = lm_texts(load_config("micro", ["ctc.lm.text=corpus"]), paths, ["a train sentence"])
    assert extra > 1000 and len(texts) == extra + 1 and "a train sentence" in texts
    only, n = lm_texts(load_config("micro", ["ctc.lm.text=lm_text"]), paths, ["a train sentence"])
    assert n == extra and "a train sentence" not in only  # train audio must not meet its own sentences
    with pytest.raises(UserError, match="lm_text.txt, missing for english"):  # never a silent switch to train
        lm_texts(load_config("micro", ["ctc.lm.text=lm_text"]), paths.__class__(paths.workdir / "none"),
                 ["a train sentence"])
    held = {line.split("\t", 1)[1].strip() for split in ("dev", "test")
            for line in (paths.corpus / "mls_german" / split / "transcripts.txt").read_text().splitlines()}
    assert held and not held & set(texts)
    lm = ArpaModel(paths.ctc_model / "lm.arpa")
    assert lm.order == cfg.ctc.lm.order and "<unk>" in lm.vocab
    assert CtcRecognizer.from_dir(paths.ctc_model).lm is not None
    assert CtcRecognizer.from_dir(paths.ctc_model, lm_cfg=cfg.ctc.lm.model_copy(update={"weight": 0.0})).lm is None


def test_recognizer_is_batch_invariant(micro_ctc):
    _, paths, _ = micro_ctc
    import numpy as np

    rec = CtcRecognizer.from_dir(paths.ctc_model)
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (8000, 24000, 16000)]
    assert rec.transcribe(waves) == [rec.transcribe([w])[0] for w in waves]


def test_evaluate_contract_on_corpus(micro_ctc):
    cfg, paths, _ = micro_ctc
    result = evaluate.run(cfg, paths, model=str(paths.ctc_model), system="ctc")
    written = json.loads((paths.reports / "ctc" / "metrics.json").read_text())
    assert written == result
    assert {"system", "model", "average_wer", "languages"} <= set(result) and result["system"] == "ctc"
    assert sorted(result["languages"]) == sorted(LANGUAGES)
    for m in result["languages"].values():
        assert set(m) == {"wer", "cer", "utterances"} and m["utterances"] == cfg.data.synthetic.test_per_language
        assert 0 <= m["cer"] and 0 <= m["wer"]
    mean = sum(m["wer"] for m in result["languages"].values()) / len(LANGUAGES)
    assert result["average_wer"] == pytest.approx(mean, abs=0.01)
    assert (paths.reports / "ctc" / "wer.md").read_text().count("|") > 20
    assert (paths.reports / "ctc" / "wer.png").stat().st_size > 1000


def test_evaluate_cli_any_dir_subset_with_corrupt_file(micro_ctc, tmp_path):
    """Two languages copied out of the corpus, one FLAC overwritten with junk: scored, skipped, counted."""
    _, paths, _ = micro_ctc
    data = tmp_path / "mls"
    for lang in ("german", "polish"):
        shutil.copytree(paths.corpus / f"mls_{lang}", data / f"mls_{lang}")
    victim = sorted((data / "mls_polish" / "test" / "audio").rglob("*.flac"))[0]
    victim.write_bytes(b"not a flac file")
    out = tmp_path / "out" / "m.json"
    cmd = [sys.executable, "-m", "llm_asr.cli", "evaluate", "--profile", "micro", "--workdir", str(paths.workdir),
           "--system", "ctc", "--data-dir", str(data), "--model", str(paths.ctc_model), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert sorted(result["languages"]) == ["german", "polish"]
    assert result["languages"]["polish"]["utterances"] == 2 and result["skipped"] == 1
    assert (out.parent / "wer.md").exists() and (out.parent / "wer.png").exists()


def test_report_merges_the_three_systems(micro_speech_llm, tmp_path):
    """reports/metrics.json holds the three systems of one run, each really evaluated on the same test
    set: ctc (with its LM), ctc-greedy (the same model, no LM), speech-llm; results.md prints both ratios."""
    from llm_asr.config import load_config
    from llm_asr.paths import Paths
    from llm_asr.stages import report

    cfg, paths = micro_speech_llm
    work = Paths.at(tmp_path)
    greedy = load_config("micro", ["ctc.lm.weight=0"])
    systems = {"ctc": (cfg, paths.ctc_model, "ctc"), "ctc-greedy": (greedy, paths.ctc_model, "ctc"),
               "speech-llm": (cfg, paths.speech_llm_model, "speech-llm")}
    for name, (c, model, system) in systems.items():
        evaluate.run(c, paths, model=str(model), system=system,
                     out=work.reports / report.SYSTEMS[name] / "metrics.json")
    merged = report.run(cfg, work)
    assert list(merged) == ["ctc", "ctc-greedy", "speech-llm"]
    assert json.loads((work.reports / "metrics.json").read_text()) == merged
    assert merged["ctc"]["decoding"] != merged["ctc-greedy"]["decoding"]  # LM beam search vs greedy
    text = (work.reports / "results.md").read_text()
    ratio = merged["speech-llm"]["average_wer"] / merged["ctc-greedy"]["average_wer"]
    assert "| german |" in text and f"Speech-LLM / CTC greedy (no LM; the paper's comparison): **{ratio:.3f}x**" in text
    assert "whisper" not in merged and "Peer" not in text  # no peer evaluated: no peer section
    for name in systems:  # hyps.jsonl: one line per scored utterance, and the WER recomputes from it
        rows = evaluate.read_hyps(work.reports / report.SYSTEMS[name] / "hyps.jsonl")
        again = metrics_json(name, "-", evaluate.by_language(rows))
        assert again["languages"] == merged[name]["languages"] and len({r["id"] for r in rows}) == len(rows)

    # the peer (the real packaged Whisper base) on the first test utterance per language: every system is
    # re-scored on exactly those utterances
    peer_cfg = load_config("micro", ["evaluate.max_utterances_per_language=1"])
    evaluate.run(peer_cfg, paths, system="whisper", out=work.reports / "whisper" / "metrics.json")
    merged = report.run(cfg, work)
    assert list(merged) == ["ctc", "ctc-greedy", "speech-llm", "whisper"]
    same = merged["whisper"]["same_utterances"]
    assert list(same) == ["ctc", "ctc-greedy", "speech-llm", "whisper"]
    assert all(v["languages"][lang]["utterances"] == 1 for v in same.values() for lang in v["languages"])
    peer_ids = {r["id"] for r in evaluate.read_hyps(work.reports / "whisper" / "hyps.jsonl")}
    ctc_rows = [r for r in evaluate.read_hyps(work.reports / "ctc" / "hyps.jsonl") if r["id"] in peer_ids]
    assert same["ctc"]["average_wer"] == metrics_json("ctc", "-", evaluate.by_language(ctc_rows))["average_wer"]
    text = (work.reports / "results.md").read_text()
    assert "## Peer: Whisper base" in text and f"**{same['speech-llm']['average_wer']:.2f}**" in text
    assert merged["whisper"]["same_utterances_count"] == sum(v["utterances"] for v in same["whisper"]["languages"].values())
    assert merged["whisper"]["peer_utterances_not_shared"] == 0
    (work.reports / "ctc" / "hyps.jsonl").unlink()  # an old evaluation without hyps: say what to re-run
    with pytest.raises(UserError, match="re-run `llm-asr evaluate --system ctc"):
        report.run(cfg, work)
    shutil.rmtree(work.reports / "whisper")
    (work.reports / "ctc_greedy" / "metrics.json").unlink()
    with pytest.raises(UserError, match="--system ctc --set ctc.lm.weight=0"):
        report.run(cfg, work)
