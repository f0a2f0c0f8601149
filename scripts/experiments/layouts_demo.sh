#!/usr/bin/env bash
# dha-convert --layout dha against --layout per-layer-gqa and the GQA
# mean-pooling baseline (--method gqa) on the embedded demo model, with
# scripts/demo's recipe: budget 0.25, search 20 steps, 200 fusion steps at
# 8 x 256, then 150 steps of 16 x 256 dha-train at lr 5e-4; held-out NLL on
# every document of corpus/heldout after conversion and after training, the
# KV bytes per token of each converted model, and those of its
# `dha-export --format gqa` (what GQA runtimes, llama.cpp included, allocate).
#
# usage: scripts/experiments/layouts_demo.sh [WORK_DIR]   (default build/experiments/layouts)
# Knobs (environment): DHA_DEMO_FUSION_STEPS (200), DHA_DEMO_TRAIN_STEPS (150), DHA_BUILD_DIR (build)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${DHA_BUILD_DIR:-"$ROOT/build"}
WORK=${1:-"$ROOT/build/experiments/layouts"}
MODEL="$ROOT/models/demo-mha"
BUDGET=0.25
FUSION_STEPS=${DHA_DEMO_FUSION_STEPS:-200}
TRAIN_STEPS=${DHA_DEMO_TRAIN_STEPS:-150}
for tool in dha-convert dha-train dha-eval dha-export dha-inspect dha-tokenize; do
  [ -x "$BIN/$tool" ] || { echo "layouts_demo.sh: $BIN/$tool is missing; build first (cmake --build build)" >&2; exit 1; }
done
mkdir -p "$WORK"
START=$SECONDS
step() { printf '[layouts %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
# shellcheck source=scripts/experiments/logged.sh
source "$ROOT/scripts/experiments/logged.sh"

step "corpus (scripts/corpus) and the training tokens"
"$ROOT/scripts/corpus" >/dev/null
CORPUS="$ROOT/corpus"
HELDOUT="$WORK/heldout.txt"
cat "$CORPUS"/heldout/*.txt > "$HELDOUT"
TRAIN_TEXT=("$CORPUS"/train/kjv.txt "$CORPUS"/train/jargon.txt)
logged "$WORK/tokenize.log" "$BIN/dha-tokenize" --tokenizer "$MODEL/tokenizer.model" --heldout 0.02 --force \
  --out "$WORK/tokens" "${TRAIN_TEXT[@]}"

nll() {  # model -> mean held-out NLL per token over every held-out document
  "$BIN/dha-eval" --model "$1" --text "$HELDOUT" --json 2>/dev/null | tail -1 |
    python3 -c 'import json, sys; print("%.4f" % json.load(sys.stdin)["mean_nll"])'
}
kv_bytes() { "$BIN/dha-inspect" --model "$1" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["kv_bytes_per_token"])'; }

step "source"
SOURCE_NLL=$(nll "$MODEL")
SOURCE_KV=$(kv_bytes "$MODEL")

ROWS=()
run() {  # name convert-args...
  local name=$1
  shift
  step "$name: dha-convert --budget $BUDGET $*"
  # scripts/demo's conversion recipe as it was when docs/results/layouts-and-runtimes.md's table was
  # measured: fusion at lr 1e-4 (scripts/demo_recipe.sh now has 5e-4).
  logged "$WORK/$name-convert.log" "$BIN/dha-convert" --model "$MODEL" --budget "$BUDGET" --calib "${TRAIN_TEXT[@]}" \
    --eval-text "$HELDOUT" --eval-docs 40 --seq-len 256 --batch 8 --search-steps 20 \
    --fusion-steps "$FUSION_STEPS" --lr 1e-4 --out "$WORK/$name" --force "$@"
  logged "$WORK/$name-export.log" "$BIN/dha-export" --model "$WORK/$name" --format gqa --out "$WORK/$name-gqa" --force
  local converted kv gqa_kv per_layer trained
  converted=$(nll "$WORK/$name")
  kv=$(kv_bytes "$WORK/$name")
  gqa_kv=$(kv_bytes "$WORK/$name-gqa")
  per_layer=$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print(" ".join("%d/%d" % (l["k_heads"], l["v_heads"]) for l in r["layout"]))' "$WORK/$name/report.json")
  step "$name: dha-train, $TRAIN_STEPS steps of 16 x 256 at lr 5e-4"
  # scripts/demo's continued pre-training.
  logged "$WORK/$name-train.log" "$BIN/dha-train" --model "$WORK/$name" --data "$WORK/tokens" --out "$WORK/$name-train" \
    --config "$ROOT/configs/train-continue.json" --steps "$TRAIN_STEPS" --batch 16 --seq-len 256 --lr 5e-4 --warmup 10 \
    --eval-every 0 --eval-docs 20 --checkpoint-every 0 --force
  trained=$(nll "$WORK/$name-train/model")
  ROWS+=("| $name | $kv | $gqa_kv | $per_layer | $converted | $trained |")
}

run dha --layout dha
run per-layer-gqa --layout per-layer-gqa
run gqa --method gqa

{
  echo "demo-mha (source: $SOURCE_KV KV bytes/token, held-out NLL $SOURCE_NLL), budget $BUDGET;"
  echo "held-out: $(awk 'BEGIN { RS = "" } END { print NR }' "$HELDOUT") documents of corpus/heldout, first 256 tokens each"
  echo
  echo "| run | KV bytes/token (bf16) | after dha-export --format gqa | K/V heads per layer | NLL after conversion | after $TRAIN_STEPS training steps |"
  echo "|---|---:|---:|---|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$WORK/results.md"
step "done; outputs in $WORK"
