"""KFP component: merge the three systems' metrics (ctc, ctc-greedy, speech-llm) into metrics.json and a table."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def report(
    profile: str,
    overrides: list,
    ctc_report: Input[Dataset],
    ctc_greedy_report: Input[Dataset],
    speech_llm_report: Input[Dataset],
    results: Output[Dataset],
    metrics: Output[Metrics],
):
    """`llm_asr.stages.report.run`; `results` holds metrics.json, results.md and both systems' reports."""
    import shutil

    from components.workspace import REPORTS, log_metrics, task_workdir
    from llm_asr.config import load_config
    from llm_asr.stages import report as stage

    cfg = load_config(profile, overrides)
    with task_workdir(outputs={REPORTS: results}) as paths:
        # small files: copied, so the results artifact is self-contained
        shutil.copytree(ctc_report.path, paths.reports / "ctc", dirs_exist_ok=True)
        shutil.copytree(ctc_greedy_report.path, paths.reports / "ctc_greedy", dirs_exist_ok=True)
        shutil.copytree(speech_llm_report.path, paths.reports / "speech_llm", dirs_exist_ok=True)
        result = stage.run(cfg, paths)
    log_metrics(metrics, result)
