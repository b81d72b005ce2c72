#!/usr/bin/env bash
# This header only sizes the small job that `sbatch run.sh RECIPE` starts: that job reads the
# recipe's recipes/RECIPE/slurm.env and submits the real job with the recipe's resources (its log
# goes to exp/RECIPE/slurm-JOBID.out, created first), then ends. `bash run.sh --slurm RECIPE`
# submits the real job directly from the login node.
#SBATCH --job-name=dphubert-submit
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --time=00:10:00
#SBATCH --output=slurm-%j.out
#
# The DPHuBERT pipeline: data -> teacher -> distill -> prune -> final distill -> final model.
#
#   bash run.sh                        # the offline demo on CPU (demo corpus, tiny teacher), target <= 15 min on 2 idle cores
#   bash run.sh hubert_base            # the paper recipe, locally on this machine's GPUs
#   sbatch run.sh                      # under SLURM the default is the paper recipe, hubert_base (4 GPUs)
#   sbatch run.sh RECIPE               # any recipe under SLURM, with the resources in recipes/RECIPE/slurm.env
#   bash run.sh --slurm RECIPE         # the same, submitted directly (no small submit job first)
#   bash run.sh --slurm --dry-run RECIPE   # print the sbatch command only
#
# A recipe is a folder recipes/NAME with recipe.env, slurm.env, distill.yaml and final_distill.yaml.
# A stage whose output exists is skipped; any failure stops the chain and names the stage.
# Under SLURM the training stages run as `srun` steps (one DDP rank per task), and the job asks for
# SIGUSR1 some minutes before its time limit: the training stage then saves last.ckpt and requeues
# the job, which skips the finished stages and resumes the running one from that checkpoint.
set -euo pipefail

SUBMIT=0; DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --slurm) SUBMIT=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n '/^# The DPHuBERT pipeline/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "run.sh: unknown option '$1' (see bash run.sh --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done

if [ -n "${SLURM_SUBMIT_DIR:-}" ]; then cd "$SLURM_SUBMIT_DIR"; else cd "$(dirname "${BASH_SOURCE[0]}")"; fi
IN_JOB=0  # 1: this is the job that runs the pipeline (not the small submit job)
[ -n "${SLURM_JOB_ID:-}" ] && [ "${RUNSH_PIPELINE_JOB:-0}" = 1 ] && IN_JOB=1
# The small job started by `sbatch run.sh` (SLURM runs its copy of the script, slurm_script) only
# submits the real one. Inside an interactive allocation (salloc) `bash run.sh` runs here, with srun.
[ "$(basename "${BASH_SOURCE[0]}")" = slurm_script ] && [ "$IN_JOB" = 0 ] && SUBMIT=1

if [ $# -ge 1 ]; then
    RECIPE="$1"
elif [ "$SUBMIT" = 1 ]; then
    RECIPE=hubert_base
    echo "run.sh: no recipe named; under SLURM the default is the paper recipe 'hubert_base' (HuBERT Base, 4 GPUs," \
         "as in DPHuBERT's 'sbatch run.sh'). The CPU demo is 'sbatch run.sh demo'."
else
    RECIPE=demo
    echo "run.sh: no recipe named; running the offline CPU demo (recipes/demo). The paper recipe is 'bash run.sh hubert_base'."
fi
RECIPE_DIR="recipes/${RECIPE}"
[ -f "${RECIPE_DIR}/recipe.env" ] || { echo "run.sh: unknown recipe '${RECIPE}' (no ${RECIPE_DIR}/recipe.env)" >&2; exit 2; }
# shellcheck disable=SC1090
source "${RECIPE_DIR}/recipe.env"
EXP="exp/${RECIPE}"

# ---- submission: sbatch with the recipe's resources ---------------------------------------
if [ "$SUBMIT" = 1 ]; then
    [ -f "${RECIPE_DIR}/slurm.env" ] || { echo "run.sh: recipe '${RECIPE}' has no ${RECIPE_DIR}/slurm.env (its SLURM resources)" >&2; exit 2; }
    # shellcheck disable=SC1090
    source "${RECIPE_DIR}/slurm.env"
    if [ "${DEMO:-0}" != 1 ] && [ ! -f "${TSV_DIR:-data/librispeech}/train960.tsv" ] && [ ! -d "${LIBRISPEECH_ROOT}" ]; then
        echo "run.sh: recipe '${RECIPE}' trains on LibriSpeech, but LIBRISPEECH_ROOT=${LIBRISPEECH_ROOT} is not a folder;" \
             "submit with LIBRISPEECH_ROOT=/path/to/LibriSpeech sbatch run.sh ${RECIPE}" >&2
        [ "$DRY_RUN" = 1 ] || exit 2
    fi
    args=(--job-name="dphubert-${RECIPE}" --nodes="${JOB_NODES}" --ntasks-per-node="${JOB_TASKS_PER_NODE}"
          --ntasks="$((JOB_NODES * JOB_TASKS_PER_NODE))" --cpus-per-task="${JOB_CPUS_PER_TASK}" --mem="${JOB_MEM}"
          --time="${JOB_TIME}" --signal="USR1@${JOB_SIGNAL_SECONDS}" --requeue --open-mode=append
          --output="${EXP}/slurm-%j.out" --export="ALL,RUNSH_PIPELINE_JOB=1")
    [ "${JOB_GPUS_PER_NODE:-0}" -gt 0 ] && args+=(--gpus-per-node="${JOB_GPUS_PER_NODE}")
    # shellcheck disable=SC2206
    args+=(${JOB_SBATCH_ARGS:-})
    echo "run.sh: recipe '${RECIPE}': sbatch ${args[*]} run.sh ${RECIPE}"
    [ "$DRY_RUN" = 1 ] && exit 0
    mkdir -p "$EXP"  # SLURM opens --output before the job starts: its folder must exist
    # A submit job's own SLURM_* variables must not leak into the new job (srun reads some as options).
    unset_slurm=()
    for name in $(compgen -e); do
        case "$name" in SLURM_CONF) ;; SLURM_*|SBATCH_*) unset_slurm+=(-u "$name") ;; esac
    done
    env "${unset_slurm[@]}" sbatch "${args[@]}" run.sh "$RECIPE" || {
        echo "run.sh: sbatch refused the job; its resources are in ${RECIPE_DIR}/slurm.env" >&2; exit 1; }
    echo "run.sh: the pipeline's log: ${EXP}/slurm-<jobid>.out and ${EXP}/run.log"
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    echo "run.sh: no .venv yet, running setup.sh"
    bash setup.sh
fi
PY=".venv/bin/python"
mkdir -p "$EXP" pretrained
LOG="$EXP/run.log"
[ "$IN_JOB" = 1 ] && echo "== SLURM job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
    "${SLURM_NNODES} node(s) x ${SLURM_NTASKS_PER_NODE:-?} task(s), recipe ${RECIPE}" | tee -a "$LOG"

# Under SLURM the training stages are srun steps: one DDP rank per task of the allocation, each with
# as many threads as the CPUs it was given.
LAUNCH=()
if [ -n "${SLURM_JOB_ID:-}" ]; then
    LAUNCH=(srun --kill-on-bad-exit=1)
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
fi
# Stages the batch shell runs itself are one process: hide the task count from Lightning.
LOCAL=(env -u SLURM_NTASKS -u SLURM_NPROCS)
PREEMPTED=75  # lightning_modules/slurm.py: the stage saved last.ckpt on a signal and stopped

run_logged() {  # run_logged NAME COMMAND...: the command's exit status (output to the log)
    local name="$1"; shift
    set +e
    "$@" 2>&1 | tee -a "$LOG"
    local status="${PIPESTATUS[0]}"
    set -e
    if [ "$status" = "$PREEMPTED" ]; then
        echo "== [$name] preempted: last.ckpt saved; the requeued job (or running run.sh again) resumes it" | tee -a "$LOG"
        exit "$PREEMPTED"
    fi
    if [ "$status" != 0 ]; then
        echo "run.sh: stage '$name' failed (exit $status; see $LOG)" >&2
        exit 1
    fi
}

stage() {  # stage NAME OUTPUT COMMAND...
    local name="$1" output="$2"; shift 2
    if [ -e "$output" ]; then
        echo "== [$name] skipped: $output exists" | tee -a "$LOG"
        return 0
    fi
    echo "== [$name] $*" | tee -a "$LOG"
    local start=$SECONDS
    if declare -F "$1" >/dev/null; then run_logged "$name" "$@"; else run_logged "$name" "${LOCAL[@]}" "$@"; fi
    [ -e "$output" ] || { echo "run.sh: stage '$name' finished without writing $output" >&2; exit 1; }
    echo "== [$name] done in $((SECONDS - start)) s" | tee -a "$LOG"
}

train_stage() {  # train_stage NAME EXP_DIR COMMAND...: done only when the command ends without error
    local name="$1" dir="$2"; shift 2
    local done_marker="$dir/stage.done"  # a folder with checkpoints but no marker is a stage to resume
    if [ -e "$done_marker" ]; then
        echo "== [$name] skipped: $done_marker exists" | tee -a "$LOG"
        return 0
    fi
    local resume=()
    if [ -f "$dir/ckpts/last.ckpt" ]; then
        resume=(--resume last)
        echo "== [$name] resuming from $dir/ckpts/last.ckpt" | tee -a "$LOG"
    fi
    echo "== [$name] ${LAUNCH[*]:+${LAUNCH[*]} }$* ${resume[*]}" | tee -a "$LOG"
    local start=$SECONDS
    run_logged "$name" "${LAUNCH[@]}" "$@" "${resume[@]}"
    [ -f "$dir/ckpts/last.ckpt" ] || { echo "run.sh: stage '$name' finished without writing $dir/ckpts/last.ckpt" >&2; exit 1; }
    touch "$done_marker"
    echo "== [$name] done in $((SECONDS - start)) s" | tee -a "$LOG"
}

# ---- data -------------------------------------------------------------------------------
if [ "${DEMO:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    stage corpus "$DEMO_CORPUS/train-clean-100" $PY prepare_data.py --make-demo-corpus "$DEMO_CORPUS" ${DEMO_CORPUS_ARGS:---hours $DEMO_HOURS --test-fraction ${DEMO_TEST_FRACTION:-0.08}}
    stage file-lists "$TSV_DIR/train100.tsv" $PY prepare_data.py --data "$DEMO_CORPUS" --out "$TSV_DIR"
else
    TSV_DIR="${TSV_DIR:-data/librispeech}"
    stage file-lists "$TSV_DIR/train960.tsv" $PY prepare_data.py --data "$LIBRISPEECH_ROOT" --out "$TSV_DIR"
fi

# ---- teacher ----------------------------------------------------------------------------
TEACHER="pretrained/${TEACHER_NAME}.pth"
if [ "${DEMO:-0}" = 1 ]; then
    # Also saves the same architecture with random weights: a reference row of the probe table.
    # shellcheck disable=SC2086
    stage teacher "$TEACHER" $PY make_demo_teacher.py --tsv_dir "$TSV_DIR" --out "$TEACHER" --exp_dir "$EXP/teacher" \
        --random_out "pretrained/${TEACHER_NAME}-random.pth" ${TEACHER_ARGS:-}
else
    stage teacher "$TEACHER" $PY convert_hubert_from_hf.py --model "$TEACHER_SOURCE" --out "$TEACHER"
fi

# ---- the four DPHuBERT stages -----------------------------------------------------------
train_stage distill "$EXP/distill" $PY distill.py --config "$RECIPE_DIR/distill.yaml" \
    --tsv_dir "$TSV_DIR" --teacher_ckpt "$TEACHER" --exp_dir "$EXP/distill"
stage prune "$EXP/distill/pruned.pth" $PY prune.py --distilled_ckpt "$EXP/distill/ckpts/last.ckpt"
train_stage final-distill "$EXP/final_distill" $PY final_distill.py --config "$RECIPE_DIR/final_distill.yaml" \
    --tsv_dir "$TSV_DIR" --teacher_ckpt "$TEACHER" --student_ckpt "$EXP/distill/pruned.pth" --exp_dir "$EXP/final_distill"
FINAL="$EXP/${TEACHER_NAME}-dp-sp$($PY -c "import yaml,sys; print('%.2f' % yaml.safe_load(open(sys.argv[1]))['target_sparsity'])" "$RECIPE_DIR/distill.yaml").pth"
stage save-final "$FINAL" $PY save_final_ckpt.py --config_path "$EXP/distill/pruned.pth" \
    --ckpt_after_final_distill "$EXP/final_distill/ckpts/last.ckpt" --out "$FINAL"

# ---- evaluation (demo): DistilHuBERT-style baseline at equal size (1 layer: the tiny teacher's 2-layer
#      student cannot be as small as the pruned one), probes, profile, report --------------------
if [ "${EVALUATE:-${DEMO:-0}}" = 1 ]; then
    BASELINE="$EXP/distilhubert/distilhubert.pth"
    stage baseline "$BASELINE" $PY distill_baseline.py --teacher_ckpt "$TEACHER" --tsv_dir "$TSV_DIR" \
        --exp_dir "$EXP/distilhubert" --student_layers 1 --match_params "$FINAL" --steps_from "$RECIPE_DIR/distill.yaml,$RECIPE_DIR/final_distill.yaml" \
        --train_subset train100 --valid_subset valid --seconds_per_batch 16 --max_sample_size 160000 --num_workers 1 \
        --accelerator cpu --devices 1 --learning_rate 1e-3 --warmup_updates 30 --log_interval 10 --progress_bar true
    # Every probe: same seeded train subset (PROBE_ARGS), all test utterances, one thread each, two at a time.
    probe_one() {  # probe_one UPSTREAM NAME
        # shellcheck disable=SC2086
        "${LOCAL[@]}" $PY probe.py --upstream "$1" --name "$2" --tsv_dir "$TSV_DIR" --threads 1 ${PROBE_ARGS:-} --json "$EXP/eval/probe_$2.json"
    }
    probe_all() {
        probe_one fbank fbank & local a=$!
        probe_one "$TEACHER" teacher
        wait "$a"
        probe_one "pretrained/${TEACHER_NAME}-random.pth" teacher-random & local b=$!
        probe_one "$FINAL" dphubert
        wait "$b"
        probe_one "$BASELINE" distilhubert
    }
    mkdir -p "$EXP/eval"
    stage probe "$EXP/eval/probe_distilhubert.json" probe_all
    stage profile "$EXP/eval/profile.json" $PY profile_model.py "$TEACHER" "$FINAL" "$BASELINE" --names teacher dphubert distilhubert \
        --tsv "$TSV_DIR/test-clean.tsv" --threads 1 --json "$EXP/eval/profile.json"
    stage report "$EXP/report.md" $PY report.py "$EXP" --out "$EXP/report.md" --title "DPHuBERT demo"
fi

# ---- summary ----------------------------------------------------------------------------
"${LOCAL[@]}" $PY -m lightning_modules.summary --teacher "$TEACHER" --student "$FINAL" \
    --stage1_logs "$EXP/distill/csv_logs/metrics.csv" --stage3_logs "$EXP/final_distill/csv_logs/metrics.csv" | tee "$EXP/summary.txt"
if [ "${DEMO:-0}" = 1 ] && [ -f "$EXP/report.md" ]; then
    echo
    echo "The demo's verdict (from $EXP/report.md):"
    sed -n '/^## Demo claim/,/^## Size, compute and speed/p' "$EXP/report.md" | sed '$d' | tee -a "$EXP/summary.txt"
    echo "run.sh: total wall time $((SECONDS / 60)) min $((SECONDS % 60)) s (load average now: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$EXP/summary.txt"
fi
