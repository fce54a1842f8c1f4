#!/usr/bin/env bash
# The MSP-Podcast target on one H100 at 1/20 scale (benchmarks/README.md, "Prepared for a GPU session"):
# full-size random-init WavLM base+, 7500 synthetic utterances with MSP-Podcast's durations, one split, 3 epochs,
# the original loop (1 epoch, extrapolated) vs the unbounded cache vs 3 GiB of disk and no GPU memory for features;
# the report ends in the linear extrapolation to 150k utterances (cache 60 GiB at full scale).
#
# Run from the repository root on the device machine (torch, transformers, numpy, scikit-learn; no pandas,
# soundfile or s3prl needed); the JSON lands in $OUT (default: benchmarks/results); $PYTHON picks the interpreter:
#   bash benchmarks/h100_podcast_check.sh
#
# Estimated time on one H100: about 4.5 min (4 to 6), from benchmarks/results/h100_iemocap_wavlm.json's rates
# with everything scaled by audio (7500 utterances of mean 5.0 s = 37.5k s; 1.31x the iemocap preset's 3.8 s):
#   setup (imports, corpus, backbone, warm-up)                        ~45 s
#   original loop, 1 epoch: 70 batches x 165 ms x 1.31 = 15 s; 3000 dev+test utterances x 27.5 ms x 1.31 = 108 s
#                                                                     ~125 s
#   unbounded cache: feature pass 37.5k s x 0.547 ms = 20 s; 3 epochs of head ~4 s        ~25 s
#   bounded (3 GiB disk holds the bf16 front ends of all utterances, 1.8 GiB, and hidden states of ~3%): feature
#   pass and shard writes ~25 s; each epoch runs the backbone's layers over ~29k s of train+dev audio:
#   10-13 s per epoch (CNN 50%-25% of the forward), x3, plus the test split once (~4 s)    ~65 s
# GPU memory: the unbounded run holds ~32 GiB of fp16 hidden states (iemocap: 18 GiB, 32 GiB peak).
set -euo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
nvidia-smi
"$PY" -c 'import torch; print(torch.__version__)'
export HF_HUB_OFFLINE=1
# --device cuda: without a GPU this stops with a one-line error instead of running for hours on the CPU
"$PY" benchmarks/benchmark_finetune.py --preset podcast_h100 --device cuda --json "$OUT/podcast_h100.json"
