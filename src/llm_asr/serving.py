"""The speech-LLM as an MLflow pyfunc: audio in (WAV/FLAC bytes; file paths only locally), text out.

Served with `mlflow models serve -m models:/llm-asr@champion --env-manager local`, a
request is `{"dataframe_split": {"columns": ["audio"], "data": [["<base64 WAV/FLAC>"]]}}`
and the answer `{"predictions": [{"text": "..."}]}`. Requests beyond the limits in
`tracking.max_*` (overridable per deployment: `MLFLOW_PYFUNC_INFERENCE_CONFIG=
'{"max_payload_mb": 5}'`), undecodable audio and (when served) file paths are answered
with HTTP 400 and a message. In local, non-served use (`mlflow.pyfunc.load_model(...)`),
a `path` column naming audio files works too.
"""

from __future__ import annotations

import json
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
# MLflow sets this in the scoring server process (and while it validates a serving example)
SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"


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
        from llm_asr.inference import load_recognizer

        mc = context.model_config
        cfg = Config.model_validate(mc["config"])
        model_dir = Path(context.artifacts["model_dir"])
        # the limits are top-level keys, so a deployment can override them without re-registering
        overrides = {k: mc[k] for k in LIMITS if k in mc}
        self.limits = TrackingConfig.model_validate({**cfg.tracking.model_dump(), **overrides})
        self.recognizer = load_recognizer(cfg, Paths(model_dir.parent), "speech-llm", model_dir)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        waves = decode_inputs(model_input, self.limits, allow_paths=not _is_served())
        return pd.DataFrame({"text": self.recognizer.transcribe(waves)})


def decode_inputs(frame: pd.DataFrame, limits: Any, allow_paths: bool) -> list[np.ndarray]:
    """16 kHz mono waveforms for each row, checking the request against LIMITS."""
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
                wave = load_audio_bytes(bytes(data))
            elif isinstance(file, str) and file:
                if not allow_paths:
                    raise _bad("file paths are not accepted by the server: send the audio bytes in 'audio'")
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


def log_model(cfg: Config, paths: Paths, model_dir: Path, name: str = "model") -> Any:
    """Log MODEL_DIR as a pyfunc in the active run; returns MLflow's ModelInfo."""
    import tempfile

    import shutil

    lock = REPO_ROOT / "requirements.lock"
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
            model_config={"config": cfg.to_dict(), **{k: getattr(cfg.tracking, k) for k in LIMITS}},
            signature=signature(),
            input_example=input_example(paths),
            # explicit, so MLflow does not load the model in a subprocess to guess them
            pip_requirements=str(lock) if lock.exists() else ["mlflow", "torch", "transformers", "peft"],
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
