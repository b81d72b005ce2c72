#!/usr/bin/env bash
#SBATCH --job-name=dphubert
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=16
#SBATCH --mem=240G
#SBATCH --time=2-00:00:00
#SBATCH --output=exp/slurm-%j.out
#
# The DPHuBERT pipeline: data -> teacher -> distill -> prune -> final distill -> final model.
#
#   bash run.sh                 # the offline demo on CPU (demo corpus, tiny teacher), target <= 15 min on 2 idle cores
#   bash run.sh hubert_base     # the paper recipe, locally on this machine's GPUs
#   sbatch run.sh hubert_base   # the same under SLURM (training stages launched with srun)
#
# A recipe is a folder recipes/NAME with recipe.env, distill.yaml and final_distill.yaml.
# A stage whose output exists is skipped; any failure stops the chain and names the stage.
set -euo pipefail

if [ -n "${SLURM_SUBMIT_DIR:-}" ]; then cd "$SLURM_SUBMIT_DIR"; else cd "$(dirname "${BASH_SOURCE[0]}")"; fi
RECIPE="${1:-demo}"
RECIPE_DIR="recipes/${RECIPE}"
[ -f "${RECIPE_DIR}/recipe.env" ] || { echo "run.sh: unknown recipe '${RECIPE}' (no ${RECIPE_DIR}/recipe.env)" >&2; exit 2; }
# shellcheck disable=SC1090
source "${RECIPE_DIR}/recipe.env"

if [ ! -x .venv/bin/python ]; then
    echo "run.sh: no .venv yet, running setup.sh"
    bash setup.sh
fi
PY=".venv/bin/python"
EXP="exp/${RECIPE}"
mkdir -p "$EXP" pretrained
LOG="$EXP/run.log"

# srun only when this script itself runs as a SLURM batch job and the recipe asks for it.
LAUNCH=()
if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${TRAIN_LAUNCHER:-}" ]; then LAUNCH=("$TRAIN_LAUNCHER"); fi

stage() {  # stage NAME OUTPUT COMMAND...
    local name="$1" output="$2"; shift 2
    if [ -e "$output" ]; then
        echo "== [$name] skipped: $output exists" | tee -a "$LOG"
        return 0
    fi
    echo "== [$name] $*" | tee -a "$LOG"
    local start=$SECONDS
    if ! "$@" 2>&1 | tee -a "$LOG"; then
        echo "run.sh: stage '$name' failed (see $LOG)" >&2
        exit 1
    fi
    [ -e "$output" ] || { echo "run.sh: stage '$name' finished without writing $output" >&2; exit 1; }
    echo "== [$name] done in $((SECONDS - start)) s" | tee -a "$LOG"
}
set -o pipefail

# ---- data -------------------------------------------------------------------------------
if [ "${DEMO:-0}" = 1 ]; then
    stage corpus "$DEMO_CORPUS/train-clean-100" $PY prepare_data.py --make-demo-corpus "$DEMO_CORPUS" --hours "$DEMO_HOURS" \
        --test-fraction "${DEMO_TEST_FRACTION:-0.08}"
    stage file-lists "$TSV_DIR/train100.tsv" $PY prepare_data.py --data "$DEMO_CORPUS" --out "$TSV_DIR"
else
    TSV_DIR="${TSV_DIR:-data/librispeech}"
    stage file-lists "$TSV_DIR/train960.tsv" $PY prepare_data.py --data "$LIBRISPEECH_ROOT" --out "$TSV_DIR"
fi

# ---- teacher ----------------------------------------------------------------------------
TEACHER="pretrained/${TEACHER_NAME}.pth"
if [ "${DEMO:-0}" = 1 ]; then
    # Also saves the same architecture with random weights: a reference row of the probe table.
    stage teacher "$TEACHER" $PY make_demo_teacher.py --tsv_dir "$TSV_DIR" --out "$TEACHER" --exp_dir "$EXP/teacher" \
        --random_out "pretrained/${TEACHER_NAME}-random.pth" ${TEACHER_ARGS:-}
else
    stage teacher "$TEACHER" $PY convert_hubert_from_hf.py --model "$TEACHER_SOURCE" --out "$TEACHER"
fi

# ---- the four DPHuBERT stages -----------------------------------------------------------
stage distill "$EXP/distill/ckpts/last.ckpt" "${LAUNCH[@]}" $PY distill.py --config "$RECIPE_DIR/distill.yaml" \
    --tsv_dir "$TSV_DIR" --teacher_ckpt "$TEACHER" --exp_dir "$EXP/distill"
stage prune "$EXP/distill/pruned.pth" $PY prune.py --distilled_ckpt "$EXP/distill/ckpts/last.ckpt"
stage final-distill "$EXP/final_distill/ckpts/last.ckpt" "${LAUNCH[@]}" $PY final_distill.py --config "$RECIPE_DIR/final_distill.yaml" \
    --tsv_dir "$TSV_DIR" --teacher_ckpt "$TEACHER" --student_ckpt "$EXP/distill/pruned.pth" --exp_dir "$EXP/final_distill"
FINAL="$EXP/${TEACHER_NAME}-dp-sp$($PY -c "import yaml,sys; print('%.2f' % yaml.safe_load(open(sys.argv[1]))['target_sparsity'])" "$RECIPE_DIR/distill.yaml").pth"
stage save-final "$FINAL" $PY save_final_ckpt.py --config_path "$EXP/distill/pruned.pth" \
    --ckpt_after_final_distill "$EXP/final_distill/ckpts/last.ckpt" --out "$FINAL"

# ---- evaluation (demo): DistilHuBERT-style baseline at equal size (1 layer: the tiny teacher's 2-layer
#      student cannot be as small as the pruned one), probes, profile, report --------------------
if [ "${DEMO:-0}" = 1 ]; then
    BASELINE="$EXP/distilhubert/distilhubert.pth"
    stage baseline "$BASELINE" $PY distill_baseline.py --teacher_ckpt "$TEACHER" --tsv_dir "$TSV_DIR" \
        --exp_dir "$EXP/distilhubert" --student_layers 1 --match_params "$FINAL" --steps_from "$RECIPE_DIR/distill.yaml,$RECIPE_DIR/final_distill.yaml" \
        --train_subset train100 --valid_subset valid --seconds_per_batch 16 --max_sample_size 160000 --num_workers 1 \
        --accelerator cpu --devices 1 --learning_rate 1e-3 --warmup_updates 30 --log_interval 10 --progress_bar true
    # Every probe: same seeded train subset (PROBE_ARGS), all test utterances, one thread each, two at a time.
    probe_one() {  # probe_one UPSTREAM NAME
        $PY probe.py --upstream "$1" --name "$2" --tsv_dir "$TSV_DIR" --threads 1 ${PROBE_ARGS:-} --json "$EXP/eval/probe_$2.json"
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
$PY -m lightning_modules.summary --teacher "$TEACHER" --student "$FINAL" \
    --stage1_logs "$EXP/distill/csv_logs/metrics.csv" --stage3_logs "$EXP/final_distill/csv_logs/metrics.csv" | tee "$EXP/summary.txt"
if [ "${DEMO:-0}" = 1 ] && [ -f "$EXP/report.md" ]; then
    echo
    echo "The demo's verdict (from $EXP/report.md):"
    sed -n '/^## Demo claim/,/^## Size, compute and speed/p' "$EXP/report.md" | sed '$d' | tee -a "$EXP/summary.txt"
    echo "run.sh: total wall time $((SECONDS / 60)) min $((SECONDS % 60)) s (load average now: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$EXP/summary.txt"
fi
