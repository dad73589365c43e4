"""`mlflow models serve -m models:/llm-asr@champion --env-manager local` over real HTTP on loopback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from llm_asr import serving
from llm_asr.data.audio import load_audio
from llm_asr.inference import load_recognizer
from tests.fixtures.tracking import free_port, stop, venv_env, wait_for_port

pytestmark = pytest.mark.integration
MAX_PAYLOAD_MB = 1.0  # set for this deployment through MLFLOW_PYFUNC_INFERENCE_CONFIG


@pytest.fixture(scope="module")
def server(micro_registry, tmp_path_factory):
    cfg, paths, _ = micro_registry
    port = free_port()
    env = venv_env({
        "MLFLOW_TRACKING_URI": cfg.tracking.tracking_uri,
        "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps({"max_payload_mb": MAX_PAYLOAD_MB}),
        "HF_HUB_OFFLINE": "1",
    })
    env.pop("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", None)
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/llm-asr@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=paths.workdir,
                                start_new_session=True)
        try:
            wait_for_port(port, proc, timeout=300)
            _wait_ready(f"http://127.0.0.1:{port}", proc)
            yield f"http://127.0.0.1:{port}"
        except Exception:
            print(log_path.read_text()[-5000:])
            raise
        finally:
            stop(proc)


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    import time

    for _ in range(300):
        try:
            if urllib.request.urlopen(f"{url}/ping", timeout=5).status == 200:
                return
        except OSError:
            pass
        assert proc.poll() is None, "the scoring server exited"
        time.sleep(0.5)
    raise TimeoutError("the scoring server never answered /ping")


def post(url: str, body: str | bytes, content_type: str = "application/json") -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_transcribes_audio_bytes_like_the_model_does_locally(server, micro_registry):
    cfg, paths, _ = micro_registry
    clips = sorted(paths.corpus.glob("mls_*/test/audio/*/*/*.flac"))[:3]
    status, answer = post(server, serving.request_body([c.read_bytes() for c in clips]))
    assert status == 200, answer
    texts = [p["text"] for p in answer["predictions"]]
    expected = load_recognizer(cfg, paths, "speech-llm", paths.speech_llm_model).transcribe(
        [load_audio(c) for c in clips]
    )
    assert texts == expected


def _split(column: str, values: list[str]) -> str:
    return json.dumps({"dataframe_split": {"columns": [column], "data": [[v] for v in values]}})


def _wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize(
    "body, says",
    [
        (_split("path", ["/etc/passwd"]), "file paths are not accepted"),
        (_split("audio", ["bm90IGF1ZGlv"]), "row 0: corrupt or not audio"),  # "not audio"
        (_split("audio", ["%%%"]), "base64"),
        (_split("audio", []), "empty request"),
        ('{"dataframe_split": {"columns": ["audio"], ', "valid JSON"),
        ('{"audio": "x"}', "dataframe_split"),
        (serving.request_body([_wav(40.0)]), f"the limit is {MAX_PAYLOAD_MB} MB"),  # 1.2 MB of audio
    ],
    ids=["path", "not-audio", "not-base64", "empty", "broken-json", "wrong-shape", "oversize"],
)
def test_bad_payloads_get_a_4xx_with_a_message(server, body, says):
    status, answer = post(server, body)
    assert 400 <= status < 500, (status, answer)
    assert says in answer.get("message", ""), answer


def test_the_server_survives_bad_payloads(server):
    status, answer = post(server, serving.request_body([_wav(1.0)]))
    assert status == 200 and isinstance(answer["predictions"][0]["text"], str)
