#!/usr/bin/env bash
# Issue #7 figures: Shared Attention alone, DHA alone and both combined at the
# same KV bytes per token, held-out NLL after conversion and after the same
# short continued pre-training, plus the cross-layer attention-similarity heatmap.
#
# usage: scripts/experiments/shared_attention.sh stories260k|demo [WORK_DIR]
#   stories260k: ../shared/models/stories260K (GQA, 5 layers x 4+4 heads), budget 0.35
#                (28 of 80 heads: sharing alone drops the keys of 3 layers);
#                TinyStories text; 120 steps of 8 x 256 tokens at lr 1e-3.
#   demo:        models/demo-mha (MHA, 6 layers x 8+8 heads), budget 0.6667 (64 of 96:
#                the keys of 4 layers); the scripts/corpus text; 120 steps of 16 x 256 at lr 5e-4.
# The combined run shares the single most similar consecutive layer (from the
# analysis) and lets DHA reach the budget over the remaining pools.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${DHA_BUILD_DIR:-"$ROOT/build"}
SHARED="$ROOT/../shared"
WHICH=${1:?usage: shared_attention.sh stories260k|demo [WORK_DIR]}
WORK=${2:-"$ROOT/build/experiments/shared-attention-$WHICH"}
mkdir -p "$WORK"
[ -x "$BIN/dha-convert" ] || { echo "shared_attention.sh: $BIN/dha-convert is missing; build first (scripts/test)" >&2; exit 1; }
# shellcheck source=scripts/experiments/logged.sh
source "$ROOT/scripts/experiments/logged.sh"

case "$WHICH" in
  stories260k)
    MODEL="$SHARED/models/stories260K/stories260K.bin"
    TOKENIZER="$SHARED/models/stories260K/tok512.bin"
    CALIB=("$SHARED/data/text/tinystories_train_sample.txt")
    VALID="$SHARED/data/text/tinystories_valid_sample.txt"
    EVAL_DOCS=200 BUDGET=0.35 BATCH=8 LR=1e-3 ;;
  demo)
    MODEL="$ROOT/models/demo-mha"
    TOKENIZER="$MODEL/tokenizer.model"
    "$ROOT/scripts/corpus" >/dev/null
    CALIB=("$ROOT/corpus/train/kjv.txt" "$ROOT/corpus/train/jargon.txt")
    VALID="$WORK/heldout.txt"
    cat "$ROOT"/corpus/heldout/*.txt > "$VALID"
    EVAL_DOCS=0 BUDGET=0.6667 BATCH=16 LR=5e-4 ;;
  *) echo "usage: shared_attention.sh stories260k|demo [WORK_DIR]" >&2; exit 1 ;;
esac
STEPS=120

logged "$WORK/tokenize.log" "$BIN/dha-tokenize" --tokenizer "$TOKENIZER" --out "$WORK/data" --force "${CALIB[@]}"
common=(--model "$MODEL" --tokenizer "$TOKENIZER" --calib "${CALIB[@]}" --eval-text "$VALID" --eval-docs "$EVAL_DOCS")

logged "$WORK/analysis.log" "$BIN/dha-convert" "${common[@]}" --analyze-attention --out "$WORK/analysis" --force
MOST_SIMILAR=$(python3 - "$WORK/analysis/report.json" <<'PY'
import json, sys
pairs = json.load(open(sys.argv[1]))["attention_similarity"]["consecutive"]
best = max(pairs, key=lambda p: (p["cosine"], p["layers"][1]))
print(best["layers"][1])
PY
)

run() {  # name convert-args...
  local name=$1
  shift
  logged "$WORK/$name-convert.log" "$BIN/dha-convert" "${common[@]}" --budget "$BUDGET" --out "$WORK/$name" --force "$@"
  logged "$WORK/$name-train.log" "$BIN/dha-train" --model "$WORK/$name" --data "$WORK/data" --out "$WORK/$name-train" \
    --force --steps "$STEPS" --batch "$BATCH" --seq-len 256 --lr "$LR" --eval-text "$VALID" --eval-docs "$EVAL_DOCS"
  python3 - "$WORK/$name" "$name" <<'PY'
import json, sys
out, name = sys.argv[1], sys.argv[2]
r = json.load(open(out + "/report.json"))
trained = [json.loads(l) for l in open(out + "-train/metrics.jsonl") if '"eval"' in l][-1]["eval_nll"]
print("| {} | {} | {} -> {} | {:.4f} | {:.4f} | {:.4f} |".format(
    name, r.get("shared_spans", "-"), r["kv_bytes_per_token"]["before"], r["kv_bytes_per_token"]["after"],
    r["before_search"]["heldout_nll"], r["after_collapse"]["heldout_nll"], trained))
PY
}

echo "$WHICH, budget $BUDGET; the most similar consecutive layers end at layer $MOST_SIMILAR"
echo "| run | shared spans | KV bytes/token | NLL source | NLL converted | NLL after $STEPS steps |"
echo "|---|---|---|---|---|---|"
run shared-attention --method shared-attention
run dha --method dha
run dha+shared --method dha --share-spans "$MOST_SIMILAR-$MOST_SIMILAR"
echo "heatmaps: $WORK/analysis/attention_similarity.svg, $WORK/analysis/attention_js.svg"
