#!/usr/bin/env bash
# Issue #4 figures: stories260K converted at budget 0.25 by dha and by gqa, then
# continued pre-training on tinystories_train_sample.txt; held-out NLL on the
# first 200 documents of the valid sample against tokens, for both, in one SVG
# and one table. usage: scripts/experiments/train_stories260k.sh [WORK_DIR] [STEPS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/build"
SHARED="$ROOT/../shared"
WORK=${1:-"$ROOT/build/experiments/train"}
STEPS=${2:-120}
MODEL="$SHARED/models/stories260K/stories260K.bin"
TRAIN="$SHARED/data/text/tinystories_train_sample.txt"
VALID="$SHARED/data/text/tinystories_valid_sample.txt"
mkdir -p "$WORK"

"$BIN/dha-tokenize" --tokenizer "$SHARED/models/stories260K/tok512.bin" --out "$WORK/data" --force "$TRAIN" >/dev/null
for method in dha gqa; do
  "$BIN/dha-convert" --model "$MODEL" --budget 0.25 --method "$method" --calib "$TRAIN" --eval-text "$VALID" \
    --eval-docs 200 --out "$WORK/$method" --force >"$WORK/$method-convert.log" 2>&1
  "$BIN/dha-train" --model "$WORK/$method" --data "$WORK/data" --out "$WORK/$method-train" --force \
    --steps "$STEPS" --batch 8 --seq-len 256 --lr 1e-3 --eval-text "$VALID" --eval-docs 200 \
    --eval-every $((STEPS / 6)) >"$WORK/$method-train.log" 2>&1
done
"$BIN/dha-plot" --run "dha (budget 0.25)=$WORK/dha-train/metrics.jsonl" \
  --run "gqa mean pooling (budget 0.25)=$WORK/gqa-train/metrics.jsonl" \
  --title "stories260K at budget 0.25: held-out NLL during continued pre-training" --out "$WORK/heldout_nll.svg" >/dev/null
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
def evals(method):
    out = {}
    for line in open(f"{work}/{method}-train/metrics.jsonl"):
        j = json.loads(line)
        if j.get("event") == "eval":
            out[j["tokens"]] = j["eval_nll"]
    return out
dha, gqa = evals("dha"), evals("gqa")
print("| tokens | dha held-out NLL | gqa held-out NLL |")
print("|---|---|---|")
for tokens in sorted(set(dha) & set(gqa)):
    print(f"| {tokens} | {dha[tokens]:.4f} | {gqa[tokens]:.4f} |")
PY
echo "curves: ${WORK#"$ROOT"/}/heldout_nll.svg"
