#!/usr/bin/env bash
# Set up on a fresh machine if needed, then run the whole test suite on CPU (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CUDA_VISIBLE_DEVICES="" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest tests -q "$@"
