#!/usr/bin/env bash
# The GPU path against its plainly written ceiling on one H100/H200 (benchmarks/README.md, "gpu_check.py"):
# feature pass, bounded training batch, --protocol original's training batch, head step and evaluation, side by
# side in one process on the same 1024 synthetic clips (random-init WavLM base+), each with its ratio to the
# ceiling and the targets (benchmarks/README.md), then where one call of each spends its device time (--profile).
#
# Run from the repository root on the device machine (torch, transformers and numpy are all it needs); the JSON
# lands in $OUT (default: benchmarks/results); $PYTHON picks the interpreter. Give the device call timeout_s=400:
#   bash benchmarks/gpu_check.sh
#
# Its estimated time: benchmarks/README.md (gpu_check.py).
set -euo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
nvidia-smi
export HF_HUB_OFFLINE=1
# --device cuda: without a GPU this stops with a one-line error instead of running on the CPU
timeout 330 "$PY" benchmarks/gpu_check.py --device cuda --profile --json "$OUT/gpu_check.json"
