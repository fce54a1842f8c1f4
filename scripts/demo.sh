#!/usr/bin/env bash
# One command, offline: set up, generate the synthetic corpus, then split -> preprocess -> finetune (5 folds)
# -> fairness -> FGSM safety -> privacy -> sustainability -> robustness -> trust profile -> report.
# Usage: bash scripts/demo.sh [OUT_DIR]
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-$REPO/demo_output}" && cd "${1:-$REPO/demo_output}" && pwd)"
bash "$REPO/scripts/setup.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY="$REPO/.venv/bin/python"
cat > "$OUT/config.yml" <<YML
data_dir:
  demo: $OUT/corpus
project_dir: $OUT
YML
MODELS="${MODELS:-whisper_tiny tera}"     # random-init backbones, compared in the trust profile
# robustness on fold 1 with 5 of the 12 default perturbations, to keep the demo short (the live backbone runs once
# per perturbation); the profile with every axis is drawn beside the original's five
PERTURBATIONS="${PERTURBATIONS:-white_20db,white_0db,babble_10db,reverb_300ms,telephone}"
ALL_AXES=uar,fairness,privacy,safety,sustainability,robustness,calibration
run_flags() {
    echo "--config $OUT/config.yml --dataset demo --pretrain_model $1 --random_init --device cpu
          --learning_rate 0.0005 --downstream_model cnn --num_epochs 30 --num_layers 3 --conv_layers 2
          --pooling mean --hidden_size 128 --batch_size 16"
}
step() { echo; echo "=== $1"; }
step "synthetic corpus + splits";   "$PY" "$REPO/train_split_gen/demo.py" --config "$OUT/config.yml" --generate
step "preprocess";                  "$PY" "$REPO/preprocess_audio/preprocess_audio.py" --dataset demo --config "$OUT/config.yml"
for MODEL in $MODELS; do
    RUN=$(run_flags "$MODEL")
    step "$MODEL: finetune (5 folds)";          "$PY" "$REPO/experiment/finetune_single_thread.py" $RUN
    step "$MODEL: fairness";                    "$PY" "$REPO/trustworthy/fairness/fairness_evaluation.py" $RUN
    step "$MODEL: safety (FGSM, 45 dB)";        "$PY" "$REPO/trustworthy/safety/adversarial_attack.py" $RUN --attack_method fgsm -snr 45
    step "$MODEL: privacy (gender inference)";  "$PY" "$REPO/trustworthy/privacy/gender_inference.py" $RUN
    step "$MODEL: sustainability";              "$PY" "$REPO/trustworthy/sustainability/sustainability.py" $RUN
    step "$MODEL: robustness (fold 1)";         "$PY" "$REPO/trustworthy/robustness/robustness.py" $RUN --folds 1 \
                                                    --perturbations "$PERTURBATIONS"
done
step "trust profile";               "$PY" "$REPO/trustworthy/plot_spider.py" --config "$OUT/config.yml" --dataset demo \
                                        --output_dir "$OUT/trust_profile"
step "trust profile, every axis";   "$PY" "$REPO/trustworthy/plot_spider.py" --config "$OUT/config.yml" --dataset demo \
                                        --output_dir "$OUT/trust_profile_all_axes" --axes "$ALL_AXES"
step "report";                      "$PY" "$REPO/trustworthy/report.py" --config "$OUT/config.yml" --dataset demo \
                                        --output_dir "$OUT/report" --axes "$ALL_AXES" > /dev/null
echo
echo "Trust profile: $OUT/trust_profile/ (PNG per model, compare.png, trust_profile.csv, trust_profile.md);"
echo "with robustness and calibration: $OUT/trust_profile_all_axes/"
cat "$OUT/trust_profile/trust_profile.md"
echo
echo "Report (training curves, confusion matrices, reliability diagrams, UAR under perturbation, trust profile):"
echo "$OUT/report/report.md"
