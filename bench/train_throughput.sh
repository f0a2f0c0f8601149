#!/usr/bin/env bash
# Training throughput of dha-train against a plain PyTorch Python loop on the
# same model (stories260K), batch, sequence length and precision, side by side
# in one run. usage: bench/train_throughput.sh [BATCH] [SEQ_LEN] [STEPS] [DEVICE]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${DHA_BIN:-"$ROOT/build"}
PYTHON=${DHA_PYTHON:-"$ROOT/.venv/bin/python"}
SHARED="$ROOT/../shared"
BATCH=${1:-8}
SEQ=${2:-256}
STEPS=${3:-30}
DEVICE=${4:-cpu}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$BIN/dha-export" --model "$SHARED/models/stories260K/stories260K.bin" --format hf --out "$WORK/hf" >/dev/null
"$BIN/dha-tokenize" --tokenizer "$SHARED/models/stories260K/tok512.bin" --out "$WORK/data" \
  "$SHARED/data/text/tinystories_train_sample.txt" >/dev/null 2>&1
"$BIN/dha-train" --model "$WORK/hf" --data "$WORK/data" --out "$WORK/run" --steps "$STEPS" --batch "$BATCH" \
  --seq-len "$SEQ" --device "$DEVICE" --eval-docs 0 >/dev/null 2>&1
dha=$("$PYTHON" -c "
import json, statistics, sys
rates = [json.loads(l)['tokens_per_s'] for l in open('$WORK/run/metrics.jsonl') if 'tokens_per_s' in l][2:]
print(statistics.median(rates))")
ref=$("$PYTHON" "$ROOT/bench/train_loop_reference.py" "$WORK/hf" "$BATCH" "$SEQ" "$STEPS" "$DEVICE" 2>/dev/null | tail -1 |
      "$PYTHON" -c "import json, sys; print(json.load(sys.stdin)['tokens_per_s'])")
printf 'stories260K, batch %s x %s tokens, %s, median of %s timed steps\n' "$BATCH" "$SEQ" "$DEVICE" $((STEPS - 2))
printf '%-32s %12.0f tokens/s\n' "dha-train" "$dha" "plain PyTorch loop (transformers)" "$ref"
"$PYTHON" -c "print('ratio dha-train / PyTorch: %.2f' % ($dha / $ref))"
