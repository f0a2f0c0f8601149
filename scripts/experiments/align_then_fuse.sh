#!/usr/bin/env bash
# Align, then fuse against the paper's recipe, right after conversion at each
# budget of BUDGETS (default 0.25): dha (default: each searched group's heads aligned first),
# dha --no-align (the paper's recipe) and aligned-gqa, on stories260K (its GQA
# form and its MHA twin; default recipe, held-out NLL on the first 200
# TinyStories valid documents) and on models/demo-mha (scripts/demo's
# conversion recipe as it was when docs/results/align-then-fuse.md's table was measured, fusion at lr
# 1e-4 where scripts/demo_recipe.sh now has 5e-4; dha-eval on corpus/heldout).
# Prints one Markdown table.
# About 8 minutes per budget on the 2-core machine.
#
# usage: [BUDGETS="0.5 0.25 0.125"] scripts/experiments/align_then_fuse.sh [WORK_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${DHA_BIN:-"$ROOT/build"}
SHARED="$ROOT/../shared"
WORK=${1:-"$ROOT/build/experiments/align_then_fuse"}
MODEL="$SHARED/models/stories260K/stories260K.bin"
CALIB="$SHARED/data/text/tinystories_train_sample.txt"
VALID="$SHARED/data/text/tinystories_valid_sample.txt"
mkdir -p "$WORK"
"$ROOT/scripts/corpus" >/dev/null
cat "$ROOT"/corpus/heldout/*.txt >"$WORK/heldout.txt"
"$BIN/dha-export" --model "$MODEL" --format mha --out "$WORK/stories260K-mha" --force >/dev/null

RUNS=("dha:" "dha --no-align:--no-align" "aligned-gqa:--method aligned-gqa")
echo "| model | budget | dha (align, then fuse: default) | dha --no-align (paper recipe) | aligned-gqa |"
echo "|---|---:|---:|---:|---:|"
for budget in ${BUDGETS:-0.25}; do
for source in "stories260K (GQA form)":"$MODEL" "stories260K (MHA twin)":"$WORK/stories260K-mha"; do
  label=${source%%:*}; path=${source#*:}; row="| $label | $budget"
  for run in "${RUNS[@]}"; do
    name=${run%%:*}; args=${run#*:}; out="$WORK/$(echo "$label-$name-$budget" | tr -c 'a-zA-Z0-9\n' '-')"
    # shellcheck disable=SC2086
    "$BIN/dha-convert" --model "$path" --budget "$budget" --calib "$CALIB" --eval-text "$VALID" --eval-docs 200 \
      --out "$out" --force $args >"$out.log" 2>&1
    row+=" | $(python3 -c "import json; print('%.4f' % json.load(open('$out/report.json'))['after_collapse']['heldout_nll'])")"
  done
  echo "$row |"
done
row="| demo-mha | $budget"
for run in "${RUNS[@]}"; do
  name=${run%%:*}; args=${run#*:}; out="$WORK/demo-$(echo "$name-$budget" | tr -c 'a-zA-Z0-9\n' '-')"
  # shellcheck disable=SC2086
  "$BIN/dha-convert" --model "$ROOT/models/demo-mha" --budget "$budget" --calib "$ROOT/corpus/train/kjv.txt" \
    "$ROOT/corpus/train/jargon.txt" --eval-text "$WORK/heldout.txt" --eval-docs 40 --seq-len 256 --batch 8 \
    --search-steps 20 --fusion-steps 200 --lr 1e-4 --out "$out" --force $args >"$out.log" 2>&1
  row+=" | $("$BIN/dha-eval" --model "$out" --text "$WORK/heldout.txt" --json | tail -1 |
           python3 -c 'import json, sys; print("%.4f" % json.load(sys.stdin)["mean_nll"])')"
done
echo "$row |"
done
