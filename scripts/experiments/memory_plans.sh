#!/usr/bin/env bash
# "Will it fit?" for Llama-2-7B and 13B, without their weights or a GPU: the
# memory plans of dha-convert (default recipe) and dha-train, per rank, for
# bf16 compute on CUDA, on 1 and 8 GPUs. Each model is its published
# config.json only (the plan reads nothing else). Prints one Markdown table.
#
# usage: scripts/experiments/memory_plans.sh [WORK_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${DHA_BIN:-"$ROOT/build"}
WORK=${1:-"$(mktemp -d)"}
mkdir -p "$WORK"
# name dim layers heads ffn (vocab 32000, context 4096, bf16, untied: Llama-2's configs)
MODELS=("Llama-2-7B 4096 32 32 11008" "Llama-2-13B 5120 40 40 13824")
for m in "${MODELS[@]}"; do
  read -r name dim layers heads ffn <<<"$m"
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": $dim, "num_hidden_layers": $layers,
 "num_attention_heads": $heads, "num_key_value_heads": $heads, "intermediate_size": $ffn, "vocab_size": 32000,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false,
 "hidden_act": "silu", "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2}
JSON
done
# The total of each plan the tool prints ("  total  X GiB  Y B/param"), one per stage.
totals() { awk '/^memory plan/ {stage=$3; sub(/,$/, "", stage)} $1 == "total" {printf "%s %.1f %.1f\n", stage, $2, $4}'; }
echo "| model | run | GPUs | stage | GiB per GPU | bytes/param | fits 80 GB |"
echo "|---|---|---:|---|---:|---:|---|"
for m in "${MODELS[@]}"; do
  read -r name _ <<<"$m"
  for gpus in 1 8; do
    runs=("dha-convert (default recipe: batch 8 x 256)|$BIN/dha-convert --model $WORK/$name --plan-only --device cuda --world-size $gpus"
          "dha-convert --train-weights none|$BIN/dha-convert --model $WORK/$name --plan-only --device cuda --world-size $gpus --train-weights none"
          "dha-train (batch 1 x 4096)|$BIN/dha-train --model $WORK/$name --plan-only --device cuda --world-size $gpus --batch 1 --seq-len 4096"
          "dha-train (batch 1 x 4096) --activation-checkpointing|$BIN/dha-train --model $WORK/$name --plan-only --device cuda --world-size $gpus --batch 1 --seq-len 4096 --activation-checkpointing")
    for run in "${runs[@]}"; do
      label=${run%%|*} cmd=${run#*|}
      $cmd 2>&1 | totals | while read -r stage gib bpp; do
        fits=$(awk -v g="$gib" 'BEGIN {print (g * 1.073741824 <= 80 ? "yes" : "no")}')
        echo "| $name | $label | $gpus | $stage | $gib | $bpp | $fits |"
      done
    done
  done
done
