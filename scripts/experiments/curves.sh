#!/usr/bin/env bash
# Held-out NLL against TOTAL tokens (conversion + continued pre-training) for
# every conversion method at equal KV budget: the curves behind
# docs/results/equal-token-curves.md.
#
# For each model (models/demo-mha; stories260K, its GQA form and its MHA twin)
# and each budget (0.5, 0.25, 0.125) it converts with
#   dha          the default recipe (the same K and V head counts in every layer; align
#                each searched group, then fuse, distilling from the source)
#   dha-paper    configs/convert-dha-paper.json's recipe (--no-align, no distillation)
#   aligned-gqa  align-then-merge GQA (Jin et al.)
#   gqa          mean pooling
#   shared-attention, where sharing attention alone can reach the budget
#                (on these models it cannot reach 0.25 or below, nor 0.5 from MHA: the
#                refusal is recorded)
#   dha-no-distill  (not in the default METHODS) dha fusing on the LM loss alone
#                (--distill-weight 0: the default recipe before distillation was)
#   dha-distill  (not in the default METHODS) dha with --distill-weight DISTILL_WEIGHT
#                (with the default 3, the same as dha: the name of the weight probes)
#   dha-distill-teach  (not in the default METHODS) dha with --distill-weight
#                DISTILL_WEIGHT in fusion, and --teacher the source in continued
#                pre-training too: a different training recipe from the baselines'
#   dha-short    (not in the default METHODS) dha with SHORT_FUSION_STEPS fusion steps
#                (default 50, against the recipe's 200): fewer tokens in conversion,
#                more left for continued pre-training
#   dha-adaptive (not in the default METHODS) dha with --adaptive: the search's costs
#                decide each layer's K and V head counts (the default before, and the paper's)
#   source       the source model itself, unconverted (its whole KV cache), through the
#                same continued pre-training: a reference line, not a baseline, that shows
#                what the training recipe does to a model that starts at the source's NLL
# then continues pre-training each with one recipe until every method has read
# the same total: 2,048,000 tokens for the demo model at budget 0.25 (LONG_TOKENS),
# 614,400 elsewhere (TOKENS). A method whose conversion read more tokens trains on
# fewer, so every curve ends at the same total; held-out NLL is evaluated along the
# way (the first evaluation is the converted model itself, at its conversion tokens).
# scripts/experiments/curves_report.py then writes results.md, tokens_to_match.json
# and one SVG per model and budget into WORK_DIR.
#
# Resumable: a finished run leaves a .done file and is skipped when the script runs
# again, so an interrupted run continues where it stopped (delete WORK_DIR to redo).
#
# JOBS runs go at once (default 2), each on nproc/JOBS threads: these models are too
# small to keep two threads busy. On the 2-core machine, two demo conversions side by
# side took 240 s against 146 s for one alone on two threads, and two trainings ran at
# 0.5 steps/s each against 0.9 for one alone.
#
# usage: [MODELS="demo stories260k stories260k-mha"] [BUDGETS="0.5 0.25 0.125"]
#        [METHODS="dha dha-paper aligned-gqa gqa shared-attention source"]
#        [TOKENS=614400] [LONG_TOKENS=2048000] [JOBS=2] [DISTILL_WEIGHT=3] [SHORT_FUSION_STEPS=50]
#        [LR=the continued pre-training lr of every method, default each model's recipe]
#        [WARMUP=10: the continued pre-training's warmup steps, every method]
#        [SCHEDULE=restart: each training run's own warmup + cosine | total: one cosine over
#         conversion + training (dha-train --prior-tokens), the same lr at the same total tokens]
#        [TEACH=0 | 1: every method continues pre-training distilled from the source
#         (--teacher, --distill-weight DISTILL_WEIGHT)]
#        [FUSION_LR=the weights' lr in every conversion's fusion, default each model's recipe]
#        scripts/experiments/curves.sh [WORK_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${DHA_BUILD_DIR:-"$ROOT/build"}
SHARED="$ROOT/../shared"
WORK=${1:-"$ROOT/build/experiments/curves"}
MODELS=${MODELS:-"demo stories260k stories260k-mha"}
BUDGETS=${BUDGETS:-"0.5 0.25 0.125"}
METHODS=${METHODS:-"dha dha-paper aligned-gqa gqa shared-attention source"}
TOKENS=${TOKENS:-614400}
TRAIN_SEQ=256  # continued pre-training sequence length, every model
LONG_TOKENS=${LONG_TOKENS:-2048000}
JOBS=${JOBS:-2}
DISTILL_WEIGHT=${DISTILL_WEIGHT:-3}
SHORT_FUSION_STEPS=${SHORT_FUSION_STEPS:-50}
FUSION_LR=${FUSION_LR:-}
WARMUP=${WARMUP:-10}
SCHEDULE=${SCHEDULE:-restart}
TEACH=${TEACH:-0}
case "$SCHEDULE" in restart | total) ;; *) echo "curves.sh: SCHEDULE must be restart or total (got \"$SCHEDULE\")" >&2; exit 1 ;; esac
THREADS=$(($(nproc) / JOBS))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((THREADS > 0 ? THREADS : 1))}
START=$SECONDS

die() { echo "curves.sh: $*" >&2; exit 1; }
[ -x "$BIN/dha-convert" ] || die "$BIN/dha-convert is missing; build first (scripts/test)"
say() { printf '[curves %5ds] %s\n' "$((SECONDS - START))" "$*"; }
# shellcheck source=scripts/experiments/logged.sh
source "$ROOT/scripts/experiments/logged.sh"
# shellcheck source=scripts/demo_recipe.sh
source "$ROOT/scripts/demo_recipe.sh"
mkdir -p "$WORK"

# ---- per-model set-up: source, texts, tokens for continued pre-training, recipes ----
setup_model() {  # model
  case "$1" in
    demo)
      "$ROOT/scripts/corpus" >/dev/null
      SOURCE="$ROOT/models/demo-mha"
      TOKENIZER="$SOURCE/tokenizer.model"
      CALIB=("$ROOT/corpus/train/kjv.txt" "$ROOT/corpus/train/jargon.txt")
      VALID="$WORK/demo-heldout.txt"
      cat "$ROOT"/corpus/heldout/*.txt > "$VALID"
      EVAL_DOCS=0  # all 174 documents of corpus/heldout (every 20th, never trained on)
      # scripts/demo's recipes (scripts/demo_recipe.sh)
      CONVERT_RECIPE=("${DEMO_CONVERT_RECIPE[@]}" --lr "${FUSION_LR:-$DEMO_FUSION_LR}")
      FUSION_STEPS=(--fusion-steps "$DEMO_FUSION_STEPS")  # apart, so that dha-short can give its own
      TRAIN_BATCH=$DEMO_TRAIN_BATCH TRAIN_LR=${LR:-$DEMO_TRAIN_LR} ;;
    stories260k | stories260k-mha)
      [ -f "$SHARED/models/stories260K/stories260K.bin" ] || die "$SHARED/models/stories260K is absent"
      SOURCE="$SHARED/models/stories260K/stories260K.bin"
      TOKENIZER="$SHARED/models/stories260K/tok512.bin"
      if [ "$1" = stories260k-mha ]; then  # the same function with every KV head written out per query head
        [ -f "$WORK/stories260K-mha/config.json" ] ||
          logged "$WORK/stories260K-mha.log" "$BIN/dha-export" --model "$SOURCE" --format mha --out "$WORK/stories260K-mha" --force
        SOURCE="$WORK/stories260K-mha"
      fi
      CALIB=("$SHARED/data/text/tinystories_train_sample.txt")
      VALID="$SHARED/data/text/tinystories_valid_sample.txt"
      EVAL_DOCS=200  # the first 200 TinyStories valid documents
      CONVERT_RECIPE=(${FUSION_LR:+--lr "$FUSION_LR"})  # dha-convert's defaults, but FUSION_LR when set
      FUSION_STEPS=()
      TRAIN_BATCH=8 TRAIN_LR=${LR:-1e-3} ;;
    *) die "unknown model \"$1\" (expected demo, stories260k or stories260k-mha)" ;;
  esac
  DATA="$WORK/${1%-mha}-tokens"
  [ -f "$DATA/.done" ] || {
    logged "$WORK/${1%-mha}-tokenize.log" "$BIN/dha-tokenize" --tokenizer "$TOKENIZER" --heldout 0.02 --out "$DATA" --force "${CALIB[@]}"
    touch "$DATA/.done"
  }
  [ -f "$WORK/$1-source.json" ] || {
    "$BIN/dha-eval" --model "$SOURCE" --text "$VALID" --max-docs "$EVAL_DOCS" --json 2>/dev/null | tail -1 > "$WORK/$1-source.json.tmp"
    mv "$WORK/$1-source.json.tmp" "$WORK/$1-source.json"
  }
}

method_args() {  # method -> the dha-convert arguments that select it
  case "$1" in
    dha) echo "--method dha" ;;
    dha-no-distill) echo "--method dha --distill-weight 0" ;;
    dha-distill | dha-distill-teach) echo "--method dha --distill-weight $DISTILL_WEIGHT" ;;
    dha-short) echo "--method dha --fusion-steps $SHORT_FUSION_STEPS" ;;
    dha-adaptive) echo "--method dha --adaptive" ;;
    dha-paper) echo "--config $ROOT/configs/convert-dha-paper.json" ;;
    aligned-gqa | gqa | shared-attention) echo "--method $1" ;;
    *) die "unknown method \"$1\"" ;;
  esac
}

# The curve's last total: LONG_TOKENS for the demo model at budget 0.25, TOKENS elsewhere.
curve_end() {  # model budget
  if [ "$1" = demo ] && [ "$2" = 0.25 ]; then echo "$LONG_TOKENS"; else echo "$TOKENS"; fi
}

run_one() {  # model budget method
  local model=$1 budget=$2 method=$3 dir="$WORK/runs/$1/$2/$3"
  [ -f "$dir/.done" ] && { say "$model $budget $method: done before, kept"; return; }
  rm -rf "$dir" && mkdir -p "$dir"
  local end per_step=$((TRAIN_BATCH * TRAIN_SEQ))
  end=$(curve_end "$model" "$budget")
  local every=$(((end / per_step + 9) / 10))  # about 10 evaluations over the longest curve, at the same training steps
  if [ "$method" = source ]; then run_source "$model" "$budget" "$dir" "$end" "$per_step" "$every"; return; fi
  say "$model $budget $method: dha-convert"
  local fusion_steps=("${FUSION_STEPS[@]}")
  [ "$method" = dha-short ] && fusion_steps=()  # its own --fusion-steps
  # shellcheck disable=SC2046
  if ! "$BIN/dha-convert" --model "$SOURCE" --tokenizer "$TOKENIZER" --calib "${CALIB[@]}" --eval-text "$VALID" \
      --eval-docs "$EVAL_DOCS" "${CONVERT_RECIPE[@]}" "${fusion_steps[@]}" $(method_args "$method") --budget "$budget" \
      --out "$dir/converted" > "$dir/convert.log" 2>&1; then
    if [ "$method" = shared-attention ] && grep -q "cannot be reached" "$dir/convert.log"; then
      grep "error:" "$dir/convert.log" | head -1 > "$dir/unreachable.txt"  # the tool's one-line reason
      touch "$dir/.done"
      say "$model $budget $method: not reachable ($(cut -c1-90 "$dir/unreachable.txt")...)"
      return
    fi
    echo "curves.sh: dha-convert failed (last lines of $dir/convert.log):" >&2
    tail -20 "$dir/convert.log" >&2
    exit 1
  fi
  local conversion
  conversion=$(python3 -c "import json; print(json.load(open('$dir/converted/report.json'))['tokens']['total'])")
  # The same total for every method: what the conversion read is taken off the training.
  local steps=$(((end - conversion + per_step / 2) / per_step))
  [ "$steps" -ge 1 ] || steps=1
  local extra=()
  { [ "$method" = dha-distill-teach ] || [ "$TEACH" = 1 ]; } && extra=(--teacher "$SOURCE" --distill-weight "$DISTILL_WEIGHT")
  [ "$SCHEDULE" = total ] && extra+=(--prior-tokens "$conversion")
  say "$model $budget $method: dha-train, $steps steps of $per_step tokens (conversion read $conversion)"
  train_curve "$dir" "$dir/converted" "$steps" "$every" "${extra[@]}"
  rm -rf "$dir/train/checkpoints"  # only the curve is needed; the model/ stays for inspection
  touch "$dir/.done"
}

# Continued pre-training with the one recipe of every curve, evaluated every N steps.
train_curve() {  # dir model steps every [dha-train args...]
  local dir=$1 model=$2 steps=$3 every=$4
  shift 4
  logged "$dir/train.log" "$BIN/dha-train" --model "$model" --data "$DATA" --out "$dir/train" \
    --config "$ROOT/configs/train-continue.json" --steps "$steps" --batch "$TRAIN_BATCH" --seq-len "$TRAIN_SEQ" \
    --lr "$TRAIN_LR" --warmup "$WARMUP" --eval-every "$every" --eval-text "$VALID" --eval-docs "$EVAL_DOCS" \
    --checkpoint-every 0 "$@" --force
}

# The source itself: no conversion (0 tokens), the whole curve in training. Its curve
# does not depend on the budget, so another budget's finished run with the same end is
# copied rather than trained again.
run_source() {  # model budget dir end per_step every
  local model=$1 budget=$2 dir=$3 end=$4 per_step=$5 every=$6 other
  for other in "$WORK/runs/$model"/*/source; do
    if [ "$other" != "$dir" ] && [ -f "$other/.done" ] && [ "$(cat "$other/end")" = "$end" ]; then
      cp -r "$other/." "$dir/"
      say "$model $budget source: the same curve as $(basename "$(dirname "$other")")'s, copied"
      return
    fi
  done
  "$BIN/dha-inspect" --model "$SOURCE" --json > "$dir/inspect.json"
  say "$model $budget source: dha-train, $((end / per_step)) steps of $per_step tokens (no conversion)"
  local teacher=()  # with TEACH=1 the source distills into itself: its KL starts at 0
  [ "$TEACH" = 1 ] && teacher=(--teacher "$SOURCE" --distill-weight "$DISTILL_WEIGHT")
  train_curve "$dir" "$SOURCE" "$((end / per_step))" "$every" "${teacher[@]}"
  rm -rf "$dir/train/checkpoints" "$dir/train/model"  # only the curve is needed
  echo "$end" > "$dir/end"
  touch "$dir/.done"
}

# Up to JOBS runs in the background; each keeps the model's settings it was started with.
running=0
wait_one() { wait -n || die "a run failed (its error is above)"; running=$((running - 1)); }
for model in $MODELS; do
  setup_model "$model"
  for budget in $BUDGETS; do
    for method in $METHODS; do
      [ "$running" -lt "$JOBS" ] || wait_one
      run_one "$model" "$budget" "$method" &
      running=$((running + 1))
    done
  done
done
while [ "$running" -gt 0 ]; do wait_one; done
say "runs finished; writing the table, tokens_to_match.json and the figures"
python3 "$ROOT/scripts/experiments/curves_report.py" --work "$WORK" --plot "$BIN/dha-plot"
say "done in $((SECONDS - START)) s"
