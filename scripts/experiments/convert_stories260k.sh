#!/usr/bin/env bash
# Issue #3 figures: stories260K converted by dha, gqa and aligned-gqa (and the
# two ablations) from its GQA form and from its MHA twin, held-out NLL on the
# first 200 documents of the TinyStories valid sample. Prints a markdown table.
# dha runs with the recipe of the time, configs/convert-dha-paper.json (groups
# fused as they are, no distillation, adaptive head counts); "-uniform" is that
# recipe with the same counts in every layer (today's default allocation).
# usage: scripts/experiments/convert_stories260k.sh [WORK_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/build"
SHARED="$ROOT/../shared"
WORK=${1:-"$ROOT/build/experiments/convert"}
MODEL="$SHARED/models/stories260K/stories260K.bin"
CALIB="$SHARED/data/text/tinystories_train_sample.txt"
VALID="$SHARED/data/text/tinystories_valid_sample.txt"
mkdir -p "$WORK"
PAPER="$ROOT/configs/convert-dha-paper.json"
python3 -c "import json, sys; r = json.load(open(sys.argv[1])); r['adaptive'] = False; json.dump(r, open(sys.argv[2], 'w'), indent=2)" \
  "$PAPER" "$WORK/paper-uniform.json"

"$BIN/dha-export" --model "$MODEL" --format mha --out "$WORK/stories260K-mha" --force >/dev/null

convert() {  # name source budget extra-args...
  local name=$1 source=$2 budget=$3
  shift 3
  "$BIN/dha-convert" --model "$source" --budget "$budget" --calib "$CALIB" --eval-text "$VALID" --eval-docs 200 \
    --out "$WORK/$name" --force "$@" >"$WORK/$name.log" 2>&1
  python3 - "$WORK/$name/report.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
after_fusion = r.get("after_fusion", {}).get("heldout_nll")
print("| {} | {} | {:.4g} | {} -> {} | {:.4f} | {} | {:.4f} | {:.0f} |".format(
    sys.argv[2], r["method"], r["budget"], r["kv_bytes_per_token"]["before"], r["kv_bytes_per_token"]["after"],
    r["before_search"]["heldout_nll"], "-" if after_fusion is None else "{:.4f}".format(after_fusion),
    r["after_collapse"]["heldout_nll"], r["wall_seconds"]))
PY
}

echo "| run | method | budget | KV bytes/token | NLL source | NLL after fusion | NLL converted | seconds |"
echo "|---|---|---|---|---|---|---|---|"
convert twin-dha-0.5 "$WORK/stories260K-mha" 0.5 --config "$PAPER"
convert twin-dha-0.5-frozen "$WORK/stories260K-mha" 0.5 --config "$PAPER" --lr 0
for source in gqa-form:"$MODEL" mha-twin:"$WORK/stories260K-mha"; do
  tag=${source%%:*}
  path=${source#*:}
  convert "$tag-dha" "$path" 0.25 --config "$PAPER"
  convert "$tag-gqa" "$path" 0.25 --method gqa
  convert "$tag-aligned-gqa" "$path" 0.25 --method aligned-gqa
  convert "$tag-dha-uniform" "$path" 0.25 --config "$WORK/paper-uniform.json"
  convert "$tag-dha-no-fusion" "$path" 0.25 --config "$PAPER" --no-fusion
done
