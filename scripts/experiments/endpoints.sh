#!/usr/bin/env bash
# Held-out NLL at the END of a training schedule, for several total-token budgets:
# one continued pre-training per method and total, each with its own warmup + cosine
# that ends at that total (conversion + training tokens), as scaling-law comparisons
# are read. curves.sh instead reads one long schedule along the way, where a model's
# NLL depends on how far its own cosine has decayed; this is the check on that.
#
# It reuses the converted models of a curves.sh run on the demo model (same recipe:
# scripts/demo_recipe.sh, configs/train-continue.json, WARMUP 10) and trains nothing
# at the total where that run's curves end: there the curve's last point is read.
#
# usage: [BUDGET=0.25] [METHODS="dha aligned-gqa gqa"]
#        [TOTALS="614400 860160 1269760 1679360 2048000"] [JOBS=2]
#        scripts/experiments/endpoints.sh CURVES_WORK_DIR [OUT_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${DHA_BUILD_DIR:-"$ROOT/build"}
CURVES=${1:?usage: scripts/experiments/endpoints.sh CURVES_WORK_DIR [OUT_DIR] (a curves.sh work dir with demo runs)}
BUDGET=${BUDGET:-0.25}
OUT=${2:-"$CURVES/endpoints-$BUDGET"}
METHODS=${METHODS:-"dha aligned-gqa gqa"}
TOTALS=${TOTALS:-"614400 860160 1269760 1679360 2048000"}
JOBS=${JOBS:-2}
THREADS=$(($(nproc) / JOBS))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((THREADS > 0 ? THREADS : 1))}
START=$SECONDS
say() { printf '[endpoints %5ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { echo "endpoints.sh: $*" >&2; exit 1; }
# shellcheck source=scripts/experiments/logged.sh
source "$ROOT/scripts/experiments/logged.sh"
# shellcheck source=scripts/demo_recipe.sh
source "$ROOT/scripts/demo_recipe.sh"
RUNS="$CURVES/runs/demo/$BUDGET"
[ -d "$RUNS" ] || die "$RUNS is missing: run MODELS=demo BUDGETS=$BUDGET scripts/experiments/curves.sh $CURVES first"
[ -d "$CURVES/demo-tokens" ] || die "$CURVES/demo-tokens is missing (curves.sh tokenizes it)"
PER_STEP=$((DEMO_TRAIN_BATCH * DEMO_TRAIN_SEQ))
mkdir -p "$OUT"

conversion_tokens() {  # method -> the tokens its conversion read
  python3 -c "import json; print(json.load(open('$RUNS/$1/converted/report.json'))['tokens']['total'])"
}

run_one() {  # method total
  local method=$1 total=$2 dir="$OUT/$1/$2" conversion steps
  [ -f "$dir/.done" ] && { say "$method $total: done before, kept"; return; }
  conversion=$(conversion_tokens "$method")
  steps=$(((total - conversion + PER_STEP / 2) / PER_STEP))
  [ "$steps" -ge 1 ] || die "$method: its conversion read $conversion tokens, more than the total $total"
  rm -rf "$dir" && mkdir -p "$dir"
  say "$method $total: dha-train, $steps steps of $PER_STEP tokens (conversion read $conversion)"
  logged "$dir/train.log" "$BIN/dha-train" --model "$RUNS/$method/converted" --data "$CURVES/demo-tokens" \
    --out "$dir/train" --config "$ROOT/configs/train-continue.json" --steps "$steps" --batch "$DEMO_TRAIN_BATCH" \
    --seq-len "$DEMO_TRAIN_SEQ" --lr "$DEMO_TRAIN_LR" --warmup "$DEMO_TRAIN_WARMUP" --eval-every 0 \
    --eval-text "$CURVES/demo-heldout.txt" --eval-docs 0 --checkpoint-every 0 --force
  rm -rf "$dir/train/checkpoints" "$dir/train/model"  # only the last evaluation is read
  touch "$dir/.done"
}

running=0
wait_one() { wait -n || die "a run failed (its error is above)"; running=$((running - 1)); }
for total in $TOTALS; do
  for method in $METHODS; do
    [ -f "$RUNS/$method/.done" ] || die "$RUNS/$method has no finished curves.sh run"
    # The curves' own end: that run already is a schedule ending at this total.
    last=$(($(conversion_tokens "$method") + $(python3 -c "
import json
print([json.loads(l) for l in open('$RUNS/$method/train/metrics.jsonl') if '\"eval\"' in l][-1]['tokens'])")))
    if (((last - total) * (last - total) <= PER_STEP * PER_STEP)); then
      mkdir -p "$OUT/$method/$total" && cp "$RUNS/$method/train/metrics.jsonl" "$OUT/$method/$total/curve.jsonl"
      touch "$OUT/$method/$total/.done"
      continue
    fi
    [ "$running" -lt "$JOBS" ] || wait_one
    run_one "$method" "$total" &
    running=$((running + 1))
  done
done
while [ "$running" -gt 0 ]; do wait_one; done

python3 - "$OUT" "$RUNS" "$METHODS" "$TOTALS" "$ROOT" "$CURVES" "$BUDGET" <<'EOF' | tee "$OUT/endpoints.md"
import json, os, sys
out, runs, methods, totals = sys.argv[1], sys.argv[2], sys.argv[3].split(), [int(t) for t in sys.argv[4].split()]
sys.path.insert(0, os.path.join(sys.argv[5], "scripts", "experiments"))
from curves_report import provenance  # the header that says when, which commit, which machine, which command
print(provenance("Each total its own schedule: demo-mha, budget %s" % sys.argv[7], "scripts/experiments/endpoints.sh",
                 sys.argv[6], "models/demo-mha (in the repository) and the converted models of the curves.sh run "
                 "named in the command, on the corpus of scripts/corpus (the King James Bible and the Jargon File "
                 "from Debian packages; every 20th document held out)"), end="")
def final(method, total):
    d = os.path.join(out, method, str(total))
    path = os.path.join(d, "curve.jsonl") if os.path.exists(os.path.join(d, "curve.jsonl")) \
        else os.path.join(d, "train", "metrics.jsonl")
    return [json.loads(l) for l in open(path) if '"eval"' in l][-1]["eval_nll"]
nll = {(m, t): final(m, t) for m in methods for t in totals}
print("Held-out NLL at the end of each schedule (its own warmup + cosine ending at the total; "
      "bold: the lowest at that total).\n")
print("| method | conversion tokens | " + " | ".join("%.2fM" % (t / 1e6) for t in totals) + " |")
print("|---|---:|" + "---:|" * len(totals))
for m in methods:
    conv = json.load(open(os.path.join(runs, m, "converted", "report.json")))["tokens"]["total"]
    cells = []
    for t in totals:
        v = nll[(m, t)]
        cells.append(("**%.4f**" if v == min(nll[(o, t)] for o in methods) else "%.4f") % v)
    print("| %s | %d | %s |" % (m, conv, " | ".join(cells)))
EOF
say "done in $((SECONDS - START)) s"
