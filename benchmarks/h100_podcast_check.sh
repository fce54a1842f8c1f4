#!/usr/bin/env bash
# The MSP-Podcast target on one H100 at 1/20 scale (benchmarks/README.md, "the 1/20-scale MSP-Podcast check"):
# full-size random-init WavLM base+, 7500 synthetic utterances with MSP-Podcast's durations, one split, 3 epochs,
# the original loop (1 epoch, extrapolated) vs the unbounded cache vs 3 GiB of disk and no GPU memory for features;
# the report ends in the linear extrapolation to 150k utterances (cache 60 GiB at full scale).
#
# Run from the repository root on the device machine (torch, transformers, numpy, scikit-learn; no pandas,
# soundfile or s3prl needed); the JSON lands in $OUT (default: benchmarks/results); $PYTHON picks the interpreter:
#   bash benchmarks/h100_podcast_check.sh
#
# Its estimated time and GPU memory, and how they were estimated: benchmarks/README.md.
set -euo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
nvidia-smi
"$PY" -c 'import torch; print(torch.__version__)'
export HF_HUB_OFFLINE=1
# --device cuda: without a GPU this stops with a one-line error instead of running for hours on the CPU
"$PY" benchmarks/benchmark_finetune.py --preset podcast_h100 --device cuda --json "$OUT/podcast_h100.json"
