#!/usr/bin/env bash
# "Will it fit?" for Llama-2-7B and 13B, without their weights or a GPU: the
# memory plans of dha-convert (default recipe) and dha-train, per rank, for
# bf16 compute on CUDA, on 1 GPU, one 8-GPU node and two (16 GPUs), replicated
# and with each ZeRO stage. Each model is its published
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
# The largest total of the plans the tool prints ("  total  X GiB  Y B/param"), with its stage.
peak() { awk '/^memory plan/ {stage=$3; gsub(/[(,]/, "", stage)}
              $1 == "total" && $2 > best {best=$2; bpp=$4; at=stage}
              END {printf "%.1f %.1f %s\n", best, bpp, at}'; }
fits() { awk -v g="$1" 'BEGIN {print (g * 1.073741824 <= 80 ? "yes" : "no")}'; }
echo "| model | run | largest stage | GiB per GPU, 1 GPU | 8 GPUs | 16 GPUs | bytes/param (8 GPUs) | fits 1 x 80 GB | fits 8 x 80 GB |"
echo "|---|---|---|---:|---:|---:|---:|---|---|"
for m in "${MODELS[@]}"; do
  read -r name _ <<<"$m"
  runs=("dha-convert (default recipe: batch 8 x 256)|dha-convert|"
        "dha-convert --train-weights attention|dha-convert|--train-weights attention"
        "dha-convert --train-weights none|dha-convert|--train-weights none"
        "dha-convert --zero 2|dha-convert|--zero 2"
        "dha-convert --zero 3|dha-convert|--zero 3"
        "dha-train (batch 1 x 4096)|dha-train|--batch 1 --seq-len 4096"
        "dha-train (batch 1 x 4096) --activation-checkpointing|dha-train|--batch 1 --seq-len 4096 --activation-checkpointing"
        "dha-train (batch 1 x 4096) --zero 1|dha-train|--batch 1 --seq-len 4096 --zero 1"
        "dha-train (batch 1 x 4096) --zero 2|dha-train|--batch 1 --seq-len 4096 --zero 2"
        "dha-train (batch 1 x 4096) --zero 2 --activation-checkpointing|dha-train|--batch 1 --seq-len 4096 --zero 2 --activation-checkpointing"
        "dha-train (batch 1 x 4096) --zero 3|dha-train|--batch 1 --seq-len 4096 --zero 3")
  for run in "${runs[@]}"; do
    IFS='|' read -r label tool args <<<"$run"
    # shellcheck disable=SC2086  # args are words
    read -r one bpp stage < <("$BIN/$tool" --model "$WORK/$name" --plan-only --device cuda --world-size 1 $args | peak)
    # shellcheck disable=SC2086
    read -r eight bpp8 _ < <("$BIN/$tool" --model "$WORK/$name" --plan-only --device cuda --world-size 8 $args | peak)
    # shellcheck disable=SC2086
    read -r sixteen _ _ < <("$BIN/$tool" --model "$WORK/$name" --plan-only --device cuda --world-size 16 $args | peak)
    echo "| $name | $label | $stage | $one | $eight | $sixteen | $bpp8 | $(fits "$one") | $(fits "$eight") |"
  done
done
