#!/usr/bin/env bash
# Slurm job array: one task per (corpus, backbone, fold). Each task fine-tunes its fold, then runs that fold's
# trust evaluations (fairness, safety, robustness; privacy on PRIVACY_FOLDS; sustainability once per corpus and
# backbone, on its first fold).
#
#   cd /path/to/trust-ser        # submit from the repository root (or set TRUST_SER_REPO)
#   mkdir -p logs                # Slurm writes the task logs there (logs/trust-ser_<job>_<task>.out)
#   sbatch --array=0-$(( 7 * 5 - 1 ))%8 scripts/slurm_array.sh --dataset iemocap --learning_rate 0.0005 \
#       --num_epochs 30 --conv_layers 2 --pooling mean --hidden_size 128
#   export CORPORA="iemocap crema_d"      # several corpora: their folds come from utils/data/corpora.py
#   LAST=$(bash scripts/slurm_array.sh --last_task) && sbatch --array=0-$LAST scripts/slurm_array.sh --num_epochs 30 ...
#   sbatch --gres=none --cpus-per-task=2 --mem=8G ...     # CPU-only or small nodes: override the #SBATCH lines below
#
# Every flag after the script name goes to every stage script, so give only the shared ones (those of
# utils/runs/cli.py: --dataset, --learning_rate, --hidden_size, --batch_size, --config, ...). The #SBATCH --array
# below covers the default lists; pass --array=0-(backbones x folds - 1) on the command line when you change them.
# Tasks are independent and may run at the same time: each writes only its own fold's files, results.json is
# rebuilt under a lock after every fold. A task that is killed, preempted or requeued resumes from the last
# finished epoch when it runs again; finished folds are skipped (add --overwrite to redo them).
#
# Afterwards, rebuild every results.json from the per-fold files (cheap, no GPU, safe to repeat):
#   bash scripts/slurm_array.sh --aggregate_only --dataset iemocap ...            # e.g. on the login node
# or chain it to the array:
#   JOB=$(sbatch --parsable scripts/slurm_array.sh ARGS)
#   sbatch --dependency=afterany:$JOB --array=0 --gres=none scripts/slurm_array.sh --aggregate_only ARGS
# A task exits 2 when one of its stages failed; the aggregation exits 2 naming the failed tasks (their exit
# status is kept under logs/status/, or TASK_STATUS_DIR) and skips runs none of whose tasks ran.
#
# Environment: CORPORA (default: the --dataset flag, else iemocap), BACKBONES, FOLDS (default: every fold of
# each corpus, from scripts/corpus_folds.py: 5 for iemocap, 6 for msp-improv, a manifest corpus' own), PRIVACY_FOLDS, ATTACKS override the lists below (space-separated); PERTURBATIONS (the robustness
# stage's --perturbations, comma-separated; default: its own list); PYTHON (default: the repo's
# .venv); DRY_RUN=1 prints the commands instead of running them. --num_tasks prints the number of tasks,
# --last_task the last task index (for --array).
#SBATCH --job-name=trust-ser
#SBATCH --array=0-34%8
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/trust-ser_%A_%a.out
set -euo pipefail

BACKBONES=(${BACKBONES:-apc tera wavlm wav2vec2_0 whisper_tiny whisper_base whisper_small})
PRIVACY_FOLDS=(${PRIVACY_FOLDS:-1})          # the original probes gender leakage on fold 1 only
ATTACKS=(${ATTACKS:-fgsm:45})                # method:snr pairs, e.g. "fgsm:45 pgd:45 gaussian_noise:30"
ROBUSTNESS_FLAGS=(${PERTURBATIONS:+--perturbations "$PERTURBATIONS"})

# Under sbatch this file runs from a spool copy, so its own location does not point into the repository.
REPO="${TRUST_SER_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}"
if [[ ! -f "$REPO/experiment/finetune_single_thread.py" ]]; then
    echo "error: $REPO is not the trust-ser repository; submit from its root or set TRUST_SER_REPO" >&2
    exit 2
fi
PY="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
# Nothing below assumes a GPU (stages pick cuda when present, else cpu): a CPU-only or small node takes the
# #SBATCH overrides of the README. Torch would start a thread per core of the node, not per CPU of the task.
if [[ -n "${SLURM_CPUS_PER_TASK:-}" && -z "${OMP_NUM_THREADS:-}" ]]; then export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK; fi
STATUS_DIR="${TASK_STATUS_DIR:-$REPO/logs/status}"    # each task's exit status, for the aggregation
FINETUNE="$REPO/experiment/finetune_single_thread.py"
FAIRNESS="$REPO/trustworthy/fairness/fairness_evaluation.py"
SAFETY="$REPO/trustworthy/safety/adversarial_attack.py"
PRIVACY="$REPO/trustworthy/privacy/gender_inference.py"
SUSTAINABILITY="$REPO/trustworthy/sustainability/sustainability.py"
ROBUSTNESS="$REPO/trustworthy/robustness/robustness.py"

dataset_flag() {   # the value of --dataset among the flags, if given
    local prev="" arg
    for arg in "$@"; do
        [[ "$prev" == --dataset ]] && echo "$arg"
        [[ "$arg" == --dataset=* ]] && echo "${arg#--dataset=}"
        prev=$arg
    done
    return 0
}
if [[ -n "${CORPORA:-}" && -n "$(dataset_flag "$@")" ]]; then
    echo "error: give the corpora either in CORPORA or with --dataset, not both" >&2
    exit 2
fi
CORPORA=(${CORPORA:-$(dataset_flag "$@")})
(( ${#CORPORA[@]} )) || CORPORA=(iemocap)

STAGE_FLAGS=("$@")
folds_of() {   # the folds of a corpus: FOLDS if set, else its own; an unknown corpus fails either way
    local own
    own=$("$PY" "$REPO/scripts/corpus_folds.py" "${STAGE_FLAGS[@]}" --dataset "$1") || return 2
    echo "${FOLDS:-$own}"
}

# The tasks, corpus by corpus, backbone by backbone, fold by fold: TASKS[i]="corpus backbone fold first_fold".
TASKS=()
for corpus in "${CORPORA[@]}"; do
    corpus_folds=($(folds_of "$corpus")) || exit 2
    for backbone in "${BACKBONES[@]}"; do
        for fold in "${corpus_folds[@]}"; do
            TASKS+=("$corpus $backbone $fold ${corpus_folds[0]}")
        done
    done
done
NUM_TASKS=${#TASKS[@]}
if (( NUM_TASKS == 0 )); then
    echo "error: no tasks: BACKBONES and FOLDS must not be empty" >&2
    exit 2
fi

run() {   # one stage script: echoed first, then run (or only echoed with DRY_RUN=1)
    echo "+ $*"
    [[ -n "${DRY_RUN:-}" ]] || "$@"
}

contains() { local x; for x in "${@:2}"; do [[ "$x" == "$1" ]] && return 0; done; return 1; }

trust_stages() {   # trust_stages PRIVACY FLAGS...: fairness, each attack, robustness, and privacy if PRIVACY is yes;
                  # all of them run even if one fails (then 1)
    local privacy=$1 attack status=0
    shift
    run "$PY" "$FAIRNESS" "$@" || status=1
    for attack in "${ATTACKS[@]}"; do
        run "$PY" "$SAFETY" "$@" --attack_method "${attack%%:*}" --snr "${attack##*:}" || status=1
    done
    run "$PY" "$ROBUSTNESS" "$@" "${ROBUSTNESS_FLAGS[@]}" || status=1
    if [[ "$privacy" == yes ]]; then
        run "$PY" "$PRIVACY" "$@" || status=1
    fi
    return $status
}

fold_task() {   # fold_task CORPUS BACKBONE FOLD FIRST_FOLD [flags...]: the trust evaluations run even if one fails
    local corpus=$1 backbone=$2 fold=$3 first_fold=$4 privacy=no status=0
    shift 4
    local common=(--dataset "$corpus" --pretrain_model "$backbone" --folds "$fold" "$@")
    run "$PY" "$FINETUNE" "${common[@]}" || return 1       # nothing to evaluate without the trained fold
    contains "$fold" "${PRIVACY_FOLDS[@]}" && privacy=yes
    trust_stages "$privacy" "${common[@]}" || status=1
    if [[ "$fold" == "$first_fold" ]]; then    # FLOPs and latency do not depend on the fold
        run "$PY" "$SUSTAINABILITY" "${common[@]}" || status=1
    fi
    return $status
}

status_file() {   # status_file CORPUS BACKBONE FOLD FLAGS...: where the task of these flags records its exit status
    local id
    id=$(printf '%s\n' "${@:4}" | cksum | cut -d' ' -f1)
    echo "$STATUS_DIR/${1}__${2//\//_}__fold${3}__${id}"
}

record() {   # record FILE STATE LOG: "started" at the start of a task, "exit N" at its end
    [[ -n "${DRY_RUN:-}" ]] && return 0
    mkdir -p "$STATUS_DIR" && echo "$2 ${3:--}" > "$1.tmp" && mv "$1.tmp" "$1"
}

failed_tasks() {   # failed_tasks FLAGS...: "index (corpus backbone fold: why[, log])" of every task that failed
    local i corpus backbone fold first file state code log
    for i in "${!TASKS[@]}"; do
        read -r corpus backbone fold first <<< "${TASKS[i]}"
        file=$(status_file "$corpus" "$backbone" "$fold" "$@")
        [[ -f "$file" ]] || continue            # never submitted (or not yet started)
        read -r state code log < "$file"
        [[ "$state $code" == "exit 0" ]] && continue
        if [[ "$state" == started ]]; then   # "started LOG": the task never reached its end
            log=$code
            code="started, no exit status (killed, timed out, preempted or still running)"
        else
            code="exit $code"
        fi
        echo "$i ($corpus $backbone fold $fold: $code${log:+, log $log})"
    done | sed 's/, log -)/)/'
}

aggregate_all() {   # results.json of every stage, corpus and backbone from the per-fold files; goes on past gaps
    local corpus backbone output status=0 failed
    failed=$(failed_tasks "$@")
    for corpus in "${CORPORA[@]}"; do
      for backbone in "${BACKBONES[@]}"; do
        local common=(--dataset "$corpus" --pretrain_model "$backbone" --aggregate_only "$@")
        if ! output=$(run "$PY" "$FINETUNE" "${common[@]}" 2>&1); then
            # one line per run: the other stages would only repeat finetune's error (e.g. a bad backbone name)
            if [[ "$output" != *"no finished folds"* ]]; then
                echo "$output"
                status=2
            elif [[ "$failed" == *"($corpus $backbone fold"* ]]; then
                :   # its failed tasks are named below
            elif [[ "$output" == *"started but unfinished"* ]]; then
                echo "$output"      # run without a recorded task status (by hand, or by an older script)
                status=2
            else
                echo "skipping $backbone on $corpus: no finished folds and no task of it ran (never submitted)"
            fi
            continue
        fi
        echo "$output"
        trust_stages yes "${common[@]}" || status=2
      done
    done
    if [[ -n "$failed" ]]; then
        local indices
        indices=$(cut -d' ' -f1 <<< "$failed" | paste -sd, -)
        echo "error: $(wc -l <<< "$failed") of $NUM_TASKS tasks failed: $(paste -sd';' - <<< "$failed" | sed 's/;/; /g');" \
             "fix the cause, rerun them (sbatch --array=$indices scripts/slurm_array.sh ARGS, or the same" \
             "run_local.sh command), then aggregate again" >&2
        status=2
    fi
    return $status
}

case "${1:-}" in
    --num_tasks) echo "$NUM_TASKS"; exit 0 ;;
    --last_task) echo $(( NUM_TASKS - 1 )); exit 0 ;;
    --aggregate_only) shift; aggregate_all "$@"; exit $? ;;
esac

TASK="${SLURM_ARRAY_TASK_ID:-}"
if [[ ! "$TASK" =~ ^[0-9]+$ ]] || (( TASK >= NUM_TASKS )); then
    echo "error: SLURM_ARRAY_TASK_ID='$TASK' is not a task in 0..$(( NUM_TASKS - 1 )) (${#CORPORA[@]} corpora x ${#BACKBONES[@]} backbones x their folds); submit with sbatch --array=0-$(( NUM_TASKS - 1 ))" >&2
    exit 2
fi
read -r CORPUS BACKBONE FOLD FIRST_FOLD <<< "${TASKS[TASK]}"
echo "task $TASK of $NUM_TASKS: corpus $CORPUS, backbone $BACKBONE, fold $FOLD"
STATUS=$(status_file "$CORPUS" "$BACKBONE" "$FOLD" "$@")
LOG="${SLURM_ARRAY_JOB_ID:+logs/trust-ser_${SLURM_ARRAY_JOB_ID}_${TASK}.out}"     # the #SBATCH --output pattern
record "$STATUS" started "$LOG"
code=0
fold_task "$CORPUS" "$BACKBONE" "$FOLD" "$FIRST_FOLD" "$@" || code=2       # a stage failed (its error is above)
record "$STATUS" "exit $code" "$LOG"
exit $code
