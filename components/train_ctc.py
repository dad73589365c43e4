"""KFP component: stage one, the tokenizer and the conformer CTC encoder (also the baseline).

It reads the corpus as `dvc.yaml`'s train_ctc does: the baseline's n-gram LM comes from each
language's `mls_<language>/lm_text.txt` (`ctc.lm.text`), so KFP and DVC build the same LM.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def train_ctc(
    profile: str,
    overrides: list,
    corpus: Input[Dataset],
    manifests: Input[Dataset],
    features: Input[Dataset],
    ctc_model: Output[Model],
    metrics: Output[Metrics],
):
    """`llm_asr.stages.train_ctc.run` from the features (and the corpus's LM text) into `ctc_model`."""
    from components.workspace import CORPUS, CTC_MODEL, FEATURES, MANIFESTS, log_metrics, task_workdir
    from llm_asr.config import load_config
    from llm_asr.stages import train_ctc as stage

    cfg = load_config(profile, overrides)
    inputs = {CORPUS: corpus, MANIFESTS: manifests, FEATURES: features}
    with task_workdir(inputs, {CTC_MODEL: ctc_model}) as paths:
        result = stage.run(cfg, paths)
    log_metrics(metrics, result)
