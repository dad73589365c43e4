"""No credentials in git, params.yaml or the compiled pipelines; credentials are read only from the
environment (locally) or Kubernetes secrets (cluster); dependency pins carry hashes.

Covered elsewhere, not repeated here: non-root Dockerfiles/manifests and secret templates
(tests/infra/test_manifests.py), secrets as env in compiled pipelines (tests/pipelines/
test_compile.py), served-model payload limits and refusal of server paths
(tests/tracking/test_serving_*.py, tests/reliability/test_bad_input.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from llm_asr.config import REPO_ROOT

PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://([^/\s:@'\"]+):([^/\s@'\"]+)@"),
    "GitHub/Slack/HF token": re.compile(r"\b(?:ghp_[A-Za-z0-9]{30,}|xox[bpas]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{30,})"),
    "secret assignment": re.compile(
        r"(?i)\b[\w-]*(?:secret|password|passwd|token|api[_-]?key|access[_-]?key(?:[_-]?id)?)\b[\"']?\s*[:=]\s*"
        r"[\"']?([A-Za-z0-9/+_\-]{12,})"),
}
# values that are not secrets: references to env/secrets, placeholders, and the fixed dummy
# credentials of local test servers (moto, s3rver)
PLACEHOLDER = re.compile(r"^(?:(?i:REPLACE_ME|CHANGEME|testing|S3RVER|example\w*|placeholder\w*|dummy\w*|"
                         r"your[_-]\w+|x{6,})|[a-z][a-z0-9]*(?:[-_.][a-z0-9]+)+|[A-Z][A-Z0-9_]+)$")


def _findings(name: str, text: str) -> list[str]:
    found = []
    for kind, pat in PATTERNS.items():
        for m in pat.finditer(text):
            values = [g for g in m.groups() if g] or [m.group(0)]
            if kind == "credentials in a URL":
                values = values[1:]  # the password part
            if kind in ("secret assignment", "credentials in a URL") and all(
                PLACEHOLDER.match(v) or v.startswith(("$", "{", "<", "%")) for v in values
            ):
                continue
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{name}:{line}: {kind}: {m.group(0)[:60]}")
    return found


def test_the_scanner_finds_what_it_looks_for():
    planted = ("aws_key = 'AKIAIOSFODNN7EXAMPLE'\n-----BEGIN RSA PRIVATE KEY-----\n"
               "uri: postgresql://mlflow:s3cr3tPassw0rd@db:5432/mlflow\npassword = 'hunter2hunter2xx'\n"
               "token: ghp_abcdefghijklmnopqrstuvwxyz0123456789\n")
    kinds = {f.split(": ")[1] for f in _findings("planted", planted)}
    assert kinds == set(PATTERNS), kinds
    clean = ("password: ${MLFLOW_PASSWORD}\nsecret-access-key: REPLACE_ME\nAWS_SECRET_ACCESS_KEY: testing\n"
             "url: postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@postgres:5432/mlflow\n"
             "secret_key_ref: llm-asr-s3\n")
    assert _findings("clean", clean) == []


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    return [REPO_ROOT / p for p in out.decode().split("\0") if p]


def test_no_credentials_in_git_tracked_files_or_params():
    files = _tracked_files()
    assert REPO_ROOT / "params.yaml" in files and len(files) > 50
    findings = []
    for path in files:
        if not path.is_file() or path.suffix in (".png", ".gz", ".pt", ".safetensors"):
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        if path.name == "test_security.py":  # this file plants examples on purpose
            continue
        findings += _findings(str(path.relative_to(REPO_ROOT)), text)
    assert not findings, "\n".join(findings)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, str]:
    from pipelines.compile import compile_all

    return {name: path.read_text() for name, path in compile_all(tmp_path_factory.mktemp("build")).items()}


def test_no_credentials_in_compiled_pipelines(compiled):
    findings = [f for name, text in compiled.items() for f in _findings(f"build/{name}.yaml", text)]
    assert not findings, "\n".join(findings)


CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def test_credentials_come_only_from_secrets_or_the_environment(compiled):
    """Compiled pipelines name credential variables only inside Kubernetes secretAsEnv mappings, and
    no code passes a literal key to a client (boto3, s3fs, mlflow): they read the environment."""
    for name, text in compiled.items():
        for var in CREDENTIAL_VARS:
            for m in re.finditer(var, text):
                window = text[max(0, m.start() - 400) : m.start()]
                assert "secretAsEnv" in window or "secretName" in window, f"{name}: {var} not from a secret"
    literal = re.compile(r"(?i)(?:aws_access_key_id|aws_secret_access_key|aws_session_token|password|secret_key)"
                         r"\s*=\s*[\"'][^\"']+[\"']")
    for path in _tracked_files():
        if path.suffix == ".py" and path.parts[len(REPO_ROOT.parts)] in ("src", "components", "pipelines"):
            for m in literal.finditer(path.read_text()):
                assert "os.environ" in m.group(0), f"{path}: {m.group(0)}"


def test_every_pin_in_the_lock_has_a_hash_and_make_requires_them():
    lock = (REPO_ROOT / "requirements.lock").read_text()
    pins = [ln for ln in re.split(r"(?<!\\)\n", lock) if ln.strip() and not ln.lstrip().startswith("#")]
    assert pins
    missing = [p.split()[0] for p in pins if "--hash=sha256:" not in p and not p.startswith("--")]
    assert not missing, f"pins without --hash: {missing[:10]}"
    assert "--require-hashes" in (REPO_ROOT / "Makefile").read_text()
