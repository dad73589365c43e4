#!/usr/bin/env bash
# The stride x LoRA-rank ablation on one machine, over the DAG's own data and CTC model
# (make run first). Each grid point trains stage two into its own scratch workdir (data/ and
# models/ctc symlinked, nothing copied), evaluates it, and `llm-asr compare` gathers the runs
# (one MLflow experiment per grid, each point under its own parent run) into reports/compare/{ablation.md,wer_vs_stride.png}.
#   tools/ablation.sh [--set KEY=VALUE ...]      e.g. a shortened budget:
#   tools/ablation.sh --set speech_llm.train.max_steps=150 --set evaluate.max_utterances_per_language=50
# Grid: GRID="80:8 160:8 240:8 480:8 960:8 80:0" (stride_ms:lora_rank; rank 0 = frozen LLM).
set -euo pipefail
cd "$(dirname "$0")/.."
GRID=${GRID:-"80:8 160:8 240:8 480:8 960:8 80:0"}
ROOT=${ABLATION_DIR:-$PWD/build/ablation}
TAG=${ABLATION_TAG:-ablation-$(date +%Y%m%d-%H%M%S)}
EXPERIMENT=${ABLATION_EXPERIMENT:-llm-asr-ablation-$TAG}  # its own experiment: compare sees only this grid
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}
for point in $GRID; do
  stride=${point%%:*}; rank=${point##*:}
  work=$ROOT/s${stride}_r${rank}
  mkdir -p "$work/models"
  ln -sfn "$PWD/data" "$work/data"
  ln -sfn "$PWD/models/ctc" "$work/models/ctc"
  grid=(--set "speech_llm.stride_ms=$stride" --set "speech_llm.lora.rank=$rank"
        --set "tracking.experiment=$EXPERIMENT" "$@")
  echo "== stride ${stride} ms, LoRA rank ${rank} -> $work"
  export LLM_ASR_PIPELINE_RUN="$TAG-s${stride}-r${rank}"
  llm-asr train-speech-llm --workdir "$work" "${grid[@]}"
  llm-asr evaluate --workdir "$work" --system speech-llm --model "$work/models/speech_llm" "${grid[@]}" \
    --out "$work/reports/speech_llm/metrics.json"
done
unset LLM_ASR_PIPELINE_RUN
llm-asr compare --experiment "$EXPERIMENT" --out-dir reports/compare
