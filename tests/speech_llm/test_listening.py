"""The default recipe listens: after training on a handful of micro utterances, the LLM's loss on its own
audio is lower than with another utterance's audio (listen_gap = shuffled - matched, logged to MLflow at
every validation). A change that makes the LLM ignore its audio (gap ~0) fails here.

Micro scale, measured (fp32, seed fixed): the frozen random 2-layer LLM learns slowly (its loss stays
near ln(vocab) ~ 10.8 nats), so the gap is small in absolute terms: 150 steps, lr 0.01, projector lr x10
reach 0.070 nats/token with the default alignment lr 0.004 (0.052 with the earlier 0.002); 40 steps
at lr 0.003 gave 0.009, and an LLM that ignores its audio gives ~0.
Two settings differ from the default, both because the micro aligner (20 steps on a 6-step CTC
encoder) never leaves CTC's all-blank phase: `compress` off (with it on, 1-3 frames per utterance
survived and the gap was -0.01), and a faster projector.
"""

from __future__ import annotations

import shutil

import pytest
import torch

pytestmark = pytest.mark.integration

STEPS = 150
MIN_GAP = 0.02  # nats per token; measured 0.070 (see above)


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
        "speech_llm.token_ctc.compress=false", "speech_llm.projector_lr_scale=10",
        f"speech_llm.train.max_steps={STEPS}", f"speech_llm.train.valid_every={STEPS // 2}",
        "speech_llm.train.lr=0.01", "speech_llm.train.warmup_steps=2", "speech_llm.align.train.max_steps=20",
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
    assert gap["listen_gap"] > MIN_GAP, gap

    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.stage = 'train_speech_llm'")
    client = mlflow.tracking.MlflowClient()
    logged = client.get_metric_history(runs.iloc[0].run_id, "valid_listen_gap")
    assert [m.step for m in logged] == [STEPS // 2, STEPS]  # every validation logs it
