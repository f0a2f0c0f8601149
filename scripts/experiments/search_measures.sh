#!/usr/bin/env bash
# The search measure, right after conversion with dha-convert's default recipe
# otherwise (align, then fuse, distilling): fusion (the default), activation, and
# aligned-activation (costs after the best rotation between each pair of heads,
# the transforms alignment applies). On stories260K (its GQA form and its MHA
# twin; held-out NLL on the first 200 TinyStories valid documents) and on
# models/demo-mha (scripts/demo's conversion recipe; corpus/heldout). Prints one
# Markdown table: held-out NLL after conversion, and the tokens the conversion read.
#
# usage: [MODELS="stories260k stories260k-mha demo"] [BUDGETS="0.25 0.125"]
#        [MEASURES="fusion activation aligned-activation"] scripts/experiments/search_measures.sh [WORK_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/demo_recipe.sh
source "$ROOT/scripts/demo_recipe.sh"
BIN=${DHA_BIN:-"$ROOT/build"}
SHARED="$ROOT/../shared"
WORK=${1:-"$ROOT/build/experiments/search_measures"}
MODELS=${MODELS:-"stories260k stories260k-mha demo"}
BUDGETS=${BUDGETS:-"0.25 0.125"}
MEASURES=${MEASURES:-"fusion activation aligned-activation"}
STORIES="$SHARED/models/stories260K/stories260K.bin"
TS_TRAIN="$SHARED/data/text/tinystories_train_sample.txt"
TS_VALID="$SHARED/data/text/tinystories_valid_sample.txt"
mkdir -p "$WORK"
[[ " $MODELS " != *" demo "* ]] || { "$ROOT/scripts/corpus" >/dev/null; cat "$ROOT"/corpus/heldout/*.txt >"$WORK/heldout.txt"; }
[[ " $MODELS " != *" stories260k-mha "* ]] || [ -f "$WORK/stories260K-mha/config.json" ] ||
  "$BIN/dha-export" --model "$STORIES" --format mha --out "$WORK/stories260K-mha" --force >/dev/null

echo "| model | budget | measure | held-out NLL after conversion | conversion tokens | seconds |"
echo "|---|---:|---|---:|---:|---:|"
for model in $MODELS; do
  case "$model" in
    stories260k) args=(--model "$STORIES" --calib "$TS_TRAIN" --eval-text "$TS_VALID" --eval-docs 200) ;;
    stories260k-mha) args=(--model "$WORK/stories260K-mha" --calib "$TS_TRAIN" --eval-text "$TS_VALID" --eval-docs 200) ;;
    demo) args=(--model "$ROOT/models/demo-mha" --calib "$ROOT/corpus/train/kjv.txt" "$ROOT/corpus/train/jargon.txt"
                --eval-text "$WORK/heldout.txt" --eval-docs 0 "${DEMO_CONVERT_RECIPE[@]}"
                --fusion-steps "$DEMO_FUSION_STEPS" --lr "$DEMO_FUSION_LR") ;;
    *) echo "search_measures.sh: unknown model \"$model\" (expected stories260k, stories260k-mha or demo)" >&2; exit 1 ;;
  esac
  for budget in $BUDGETS; do
    for measure in $MEASURES; do
      out="$WORK/$model-$budget-$measure"
      start=$SECONDS
      "$BIN/dha-convert" "${args[@]}" --budget "$budget" --measure "$measure" --out "$out" --force >"$out.log" 2>&1 ||
        { echo "search_measures.sh: dha-convert failed, see $out.log" >&2; exit 1; }
      python3 - "$out/report.json" "$model" "$budget" "$measure" "$((SECONDS - start))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("| %s | %s | %s | %.4f | %d | %s |" % (sys.argv[2], sys.argv[3], sys.argv[4],
      r["after_collapse"]["heldout_nll"], r["tokens"]["total"], sys.argv[5]))
PY
    done
  done
done
