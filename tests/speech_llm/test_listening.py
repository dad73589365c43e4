"""The default recipe listens: after a few dozen micro steps the LLM's loss on its own audio is clearly
lower than with another utterance's audio (listen_gap = shuffled - matched, logged to MLflow at every
validation). A change that makes the LLM ignore its audio fails here."""

from __future__ import annotations

import shutil

import pytest
import torch

pytestmark = pytest.mark.integration

STEPS = 40


def test_default_recipe_listens_and_logs_the_gap(micro_ctc, workdir_on_micro_data) -> None:
    import mlflow

    from llm_asr.config import load_config
    from llm_asr.data.batching import make_eval_sampler
    from llm_asr.features import load_cmvn
    from llm_asr.models.speech_llm_dir import load_model_dir
    from llm_asr.models.speech_llm_task import SpeechLlmTask
    from llm_asr.stages import train_speech_llm
    from llm_asr.stages.train_ctc import load_cuts

    _, micro_paths, _ = micro_ctc
    paths = workdir_on_micro_data
    shutil.copytree(micro_paths.ctc_model, paths.ctc_model)
    default = load_config("default").speech_llm
    cfg = load_config("micro", [
        f"speech_llm.projector={default.projector}", f"speech_llm.freeze_encoder={default.freeze_encoder}",
        f"speech_llm.align.enabled={default.align.enabled}", f"speech_llm.stride_ms={default.stride_ms}",
        f"speech_llm.train.max_steps={STEPS}", "speech_llm.train.valid_every=20", "speech_llm.train.lr=0.003",
        "speech_llm.train.warmup_steps=2", "speech_llm.align.train.max_steps=20",
        f"tracking.tracking_uri=sqlite:///{paths.workdir}/mlflow.db",
    ])
    train_speech_llm.run(cfg, paths)

    model, tok, mcfg = load_model_dir(paths.speech_llm_model)
    task = SpeechLlmTask(model, tok, None, load_cmvn(paths.speech_llm_model / "cmvn.json"), mcfg.speech_llm)
    cuts = load_cuts(paths, "train")
    batches = [task.collate(c) for c in make_eval_sampler(cuts, 30.0)]
    with torch.no_grad():
        gap = task.validate(model, batches)
    # the utterances it trained on: matched audio must explain the transcript far better than another's
    assert gap["listen_gap"] > 0.5, gap

    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.stage = 'train_speech_llm'")
    client = mlflow.tracking.MlflowClient()
    logged = client.get_metric_history(runs.iloc[0].run_id, "valid_listen_gap")
    assert [m.step for m in logged] == [20, 40]  # every validation logs it
