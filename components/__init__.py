"""KFP v2 lightweight components, one per stage; each calls `llm_asr.stages.<stage>.run`.

Every component runs in the project image (`infra/Dockerfile`), which already holds the
package, so none installs anything. Set `LLM_ASR_IMAGE` when compiling to point the
pipelines at the registry your cluster pulls from.
"""

import os

PROJECT_IMAGE = os.environ.get("LLM_ASR_IMAGE", "ghcr.io/llm-asr/llm-asr:0.1.0")
