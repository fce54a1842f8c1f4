#!/usr/bin/env bash
# The Slurm array of scripts/slurm_array.sh on one machine: every (corpus, backbone, fold) task in turn, or JOBS
# at a time (xargs -P), then every results.json rebuilt from the per-fold files.
#
#   bash scripts/run_local.sh --dataset iemocap --learning_rate 0.0005 --num_epochs 30 --conv_layers 2 \
#       --pooling mean --hidden_size 128
#   JOBS=2 BACKBONES="apc whisper_tiny" FOLDS="1 2" bash scripts/run_local.sh --dataset crema_d
#   CORPORA="iemocap crema_d msp-improv" BACKBONES="wavlm" bash scripts/run_local.sh --num_epochs 30
#
# Same lists, environment overrides (CORPORA, BACKBONES, FOLDS, PRIVACY_FOLDS, ATTACKS, PERTURBATIONS, PYTHON,
# DRY_RUN) and flag
# passthrough as slurm_array.sh. Parallel tasks share the GPU(s) of this machine: mind its memory (lower
# --batch_size / --eval_batch_size), or give each task its own GPU with CUDA_VISIBLE_DEVICES per invocation.
# Stop it at any moment and run the same command again: finished folds are skipped, an interrupted fold
# resumes from its last finished epoch.
set -euo pipefail
ARRAY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm_array.sh"
export TRUST_SER_REPO="${TRUST_SER_REPO:-$(cd "$(dirname "$ARRAY")/.." && pwd)}"
JOBS="${JOBS:-1}"
NUM_TASKS=$(bash "$ARRAY" --num_tasks "$@")

# A failed task is named once, by the aggregation (which then exits 2), not here as well.
seq 0 $(( NUM_TASKS - 1 )) | xargs -P "$JOBS" -I{} env SLURM_ARRAY_TASK_ID={} bash "$ARRAY" "$@" || true
exec bash "$ARRAY" --aggregate_only "$@"
