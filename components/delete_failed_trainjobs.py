"""KFP component: the distributed pipeline's exit task; deletes the run's TrainJobs when the run failed.

A failed or cancelled pipeline run would otherwise leave its TrainJob (and the GPUs of
every node) running until its deadline. The launcher labels each TrainJob with the
pipeline run id (`components.trainjob.PIPELINE_RUN_LABEL`); this task, run by
`dsl.ExitHandler` whatever the outcome, deletes those TrainJobs unless the run
succeeded. Its service account needs `delete` on trainjobs (`infra/base/rbac.yaml`).
"""

from kfp import dsl

from components import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)  # the image has kfp
def delete_failed_trainjobs(status: dsl.PipelineTaskFinalStatus, namespace: str = "") -> str:
    """Delete this pipeline run's TrainJobs unless the run succeeded; returns their names, comma-separated.

    The TrainJobs ran `llm_asr.stages.train_speech_llm.run`; a succeeded run keeps its
    TrainJob (logs and status stay readable until someone deletes it).
    """
    from components.trainjob import delete_run_trainjobs
    from components.workspace import pipeline_run

    run = pipeline_run()
    if not run:
        raise RuntimeError("no pipeline run id in the environment (pipelines.platform.common sets it)")

    if status.state == "SUCCEEDED":
        print(f"pipeline run {run} succeeded: its TrainJobs are kept")
        return ""
    deleted = delete_run_trainjobs(run, namespace or None)
    print(f"pipeline run {run} ended {status.state} ({status.error_message}): "
          f"deleted TrainJobs {deleted or 'none'}")
    return ",".join(deleted)
