"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

Stages use `stage_run(cfg, paths, "train_ctc")` as a context manager; inside it,
`mlflow.log_metric(...)` etc. work as usual. The tracking URI is, in order:
`tracking.tracking_uri`, `$MLFLOW_TRACKING_URI`, or the embedded sqlite store
`sqlite:///<workdir>/mlflow.db` with artifacts under `<workdir>/mlartifacts/`.
A pipeline run groups its stages by `$LLM_ASR_PARENT_RUN_ID` (set by the orchestrator)
or, failing that, by `$LLM_ASR_PIPELINE_RUN` (a name shared by all stages of one run;
`make run` sets it). `download_model_dir` turns a `models:/` or `runs:/` URI of a
registered pyfunc (see `llm_asr.serving`) into the local model directory it carries.

Lineage: the git sha is the image's `$LLM_ASR_GIT_SHA` (build arg `GIT_SHA`) or the checkout's;
on KFP every run is also tagged with the KFP run id and the image (`$LLM_ASR_KFP_RUN_ID`,
`$LLM_ASR_IMAGE`, set by `pipelines.platform`). Training and register runs log the manifests
of their splits as MLflow dataset inputs (digest = `split_digest`); a training run is tagged
with its model directory's digest, which is how `find_training_run` finds it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

from llm_asr.config import REPO_ROOT, Config
from llm_asr.errors import UserError
from llm_asr.paths import Paths


def tracking_uri(cfg: Config, paths: Paths) -> str:
    embedded = f"sqlite:///{paths.mlflow_db}"
    return cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or embedded


def _git_sha() -> str:
    if os.environ.get("LLM_ASR_GIT_SHA", "unknown") != "unknown":
        return os.environ["LLM_ASR_GIT_SHA"]  # the image's build arg: no .git inside it
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "none"


def _dvc_lock_sha(paths: Paths) -> str:
    """The workdir's dvc.lock, else the one the code came with (a KFP task's workdir has none)."""
    own = _file_sha(paths.workdir / "dvc.lock")
    return own if own != "none" else _file_sha(REPO_ROOT / "dvc.lock")


def split_digest(paths: Paths, split: str) -> str:
    """Digest of SPLIT's manifests, which name every audio file and transcript of it (byte-stable,
    workdir-relative paths: equal data gives an equal digest in any workdir); "none" without them."""
    files = sorted(paths.manifests.glob(f"*_{split}.jsonl.gz"))
    if not files:
        return "none"
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def model_digest(model_dir: Path) -> str:
    """Digest of a model directory's files (names and bytes; not its resumable checkpoints/)."""
    h = hashlib.sha256()
    files = [p for p in model_dir.rglob("*") if p.is_file() and "checkpoints" not in p.relative_to(model_dir).parts]
    for f in sorted(files):
        h.update(str(f.relative_to(model_dir)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def data_hash(paths: Paths) -> str:
    """Digest of the manifests (which name every audio file and transcript)."""
    h = hashlib.sha256()
    for f in sorted(paths.manifests.glob("*.jsonl.gz")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_tags(cfg: Config, paths: Paths) -> dict[str, str]:
    llm = cfg.speech_llm.llm.name_or_path
    return {
        "git_sha": _git_sha(),
        "dvc_lock_sha": _dvc_lock_sha(paths),
        "profile": cfg.profile,
        "stride_ms": str(cfg.speech_llm.stride_ms),
        "lora_rank": str(cfg.speech_llm.lora.rank),
        "llm": llm if cfg.speech_llm.llm.source != "random" else "random-tiny-llama",
        "projector": cfg.speech_llm.projector,
        "data_hash": data_hash(paths),
        "config_digest": cfg.digest(),
        **{tag: os.environ[env] for tag, env in ORCHESTRATOR_TAGS.items() if os.environ.get(env)},
    }


ORCHESTRATOR_TAGS = {"kfp_run_id": "LLM_ASR_KFP_RUN_ID", "image": "LLM_ASR_IMAGE"}  # tag -> env var
# the splits whose manifests a stage's run logs as dataset inputs, and the model directory it tags
STAGE_SPLITS = {
    "train_ctc": ("train", "dev"), "train_speech_llm": ("train", "dev"), "register": ("train", "dev", "test"),
}
TRAINING_STAGE = "train_speech_llm"


def log_split_inputs(paths: Paths, splits: tuple[str, ...]) -> None:
    """Each split's manifests as an MLflow dataset input (name = split, digest = `split_digest`)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for split in splits:
        digest = split_digest(paths, split)
        if digest == "none":
            continue
        with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(paths.manifests.resolve().as_uri())
        context = "testing" if split == "test" else "training" if split == "train" else "validation"
        mlflow.log_input(MetaDataset(source, name=split, digest=digest), context=context)


def find_training_run(cfg: Config, paths: Paths, model_dir: Path) -> str:
    """The id of the finished stage-two run that wrote MODEL_DIR (tagged with its `model_digest`),
    the latest if several; "unknown" when this tracking store has none (trained elsewhere)."""
    import mlflow

    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    found = [] if exp is None else mlflow.search_runs(
        [exp.experiment_id], output_format="list", max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.stage = '{TRAINING_STAGE}' and tags.model_digest = '{model_digest(model_dir)}' "
                      "and attributes.status = 'FINISHED'",
    )
    return found[0].info.run_id if found else "unknown"


def setup(cfg: Config, paths: Paths) -> str:
    import mlflow

    uri = tracking_uri(cfg, paths)
    mlflow.set_tracking_uri(uri)
    artifacts = None
    if uri.startswith("sqlite:"):
        paths.mlartifacts.mkdir(parents=True, exist_ok=True)
        artifacts = paths.mlartifacts.as_uri()
    mlflow.set_experiment(experiment_id=_ensure_experiment(cfg.tracking.experiment, artifacts))
    return uri


def _ensure_experiment(name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating it if needed. Stages started together (KFP ParallelFor,
    several processes) race to create it: the loser's "already exists" error means re-read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _log_config_params(client: Any, run_id: str, cfg: Config) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:500]) for k, v in cfg.flat().items()]
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[i : i + 100])


def _parent_run_id(cfg: Config, paths: Paths) -> tuple[str | None, bool]:
    """(parent run id, whether we own it): the orchestrator's, or one per pipeline-run name."""
    import mlflow

    if os.environ.get("LLM_ASR_PARENT_RUN_ID"):
        return os.environ["LLM_ASR_PARENT_RUN_ID"], False
    name = os.environ.get("LLM_ASR_PIPELINE_RUN")
    if not name:
        return None, False
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    found = mlflow.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.pipeline_run = '{name}'",
        output_format="list",
        max_results=1,
    )
    if found:
        return found[0].info.run_id, True
    client = mlflow.MlflowClient()
    tags = {**run_tags(cfg, paths), "pipeline_run": name, "stage": "pipeline"}
    run = client.create_run(exp.experiment_id, run_name=name, tags=tags)
    _log_config_params(client, run.info.run_id, cfg)
    return run.info.run_id, True


@contextlib.contextmanager
def stage_run(
    cfg: Config, paths: Paths, stage: str, extra_tags: dict[str, str] | None = None
) -> Iterator[Any]:
    """An MLflow run for one stage, nested under the pipeline's parent run when there is one.

    A parent made here from `$LLM_ASR_PIPELINE_RUN` is marked finished (or failed) after
    each stage, so the UI shows the pipeline's status and duration up to its last stage.
    """
    import mlflow

    setup(cfg, paths)
    parent, own_parent = _parent_run_id(cfg, paths)
    tags = {**run_tags(cfg, paths), "stage": stage, **(extra_tags or {})}
    if parent:
        tags["mlflow.parentRunId"] = parent
    status = "FAILED"
    try:
        with mlflow.start_run(run_name=stage, tags=tags) as run:
            _log_config_params(mlflow.MlflowClient(), run.info.run_id, cfg)
            log_split_inputs(paths, STAGE_SPLITS.get(stage, ()))
            yield run
            if stage == TRAINING_STAGE and paths.speech_llm_model.is_dir():
                mlflow.set_tag("model_digest", model_digest(paths.speech_llm_model))
        status = "FINISHED"
    finally:
        if own_parent:
            mlflow.MlflowClient().set_terminated(parent, status)


def download_model_dir(cfg: Config, paths: Paths, uri: str) -> Path:
    """The speech-LLM model directory inside a registered/logged pyfunc (`models:/...`, `runs:/...`).

    Downloads once per model version into `<cache>/mlflow-models/` and returns the
    directory the pyfunc carries as its `model_dir` artifact.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    store = tracking_uri(cfg, paths)
    mlflow.set_tracking_uri(store)
    try:
        key = _model_cache_key(store, uri)
        dest = paths.cache / "mlflow-models" / key
        if not (dest / "MLmodel").exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=_mkdir(dest.parent)))
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
    except MlflowException as e:
        raise UserError(
            f"cannot load {uri} from {store}: {e.message.splitlines()[0]} "
            "(register a model with `llm-asr register`, or pass a local model directory)"
        ) from None
    return _pyfunc_model_dir(dest, uri)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _model_cache_key(store: str, uri: str) -> str:
    """A key naming the exact model behind URI (an alias resolves to its current version)."""
    import mlflow

    ident = uri
    if uri.startswith("models:/"):
        ref = uri[len("models:/") :].rstrip("/")
        client = mlflow.MlflowClient()
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
            ident = f"{mv.name}/{mv.version}/{mv.source}"
        elif "/" in ref and not ref.startswith("m-"):
            name, version = ref.split("/", 1)
            mv = client.get_model_version(name, version)
            ident = f"{mv.name}/{mv.version}/{mv.source}"
    return hashlib.sha256(f"{store}|{ident}".encode()).hexdigest()[:20]


def _pyfunc_model_dir(local: Path, uri: str) -> Path:
    import yaml

    meta = yaml.safe_load((local / "MLmodel").read_text())
    artifacts = meta.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if "model_dir" not in artifacts:
        raise UserError(f"{uri} is not an llm-asr model (its pyfunc has no model_dir artifact)")
    return local / artifacts["model_dir"]["path"]
