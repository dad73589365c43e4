"""Shared test setup. Fixtures live in tests/fixtures/<area>.py, one module per area:
data (micro corpus + features), ctc (a trained micro CTC model), speech_llm (a trained
micro speech-LLM), tracking (MLflow store, S3 server). Session-scoped fixtures build the
micro pipeline once and later fixtures build on earlier ones."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.ctc",
    "tests.fixtures.speech_llm",
    "tests.fixtures.tracking",
]
