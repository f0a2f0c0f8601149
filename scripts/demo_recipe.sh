# shellcheck shell=bash
# The demo model's recipe (models/demo-mha) in one place, for scripts/demo and the
# experiment scripts that measure against it. Sourced, not run.
#
# Conversion: 20 search steps and 200 fusion steps of 8 x 256 tokens, the weights
# trained in fusion at the lr continued pre-training uses (5e-4): fused at 1e-4, the
# model's NLL first rose in training (docs/results/equal-token-curves.md).
# Continued pre-training: steps of 16 x 256 tokens at lr 5e-4 after 10 warmup steps.
# shellcheck disable=SC2034  # read by the scripts that source this
DEMO_CONVERT_RECIPE=(--seq-len 256 --batch 8 --search-steps 20)
DEMO_FUSION_STEPS=200
DEMO_FUSION_LR=5e-4
DEMO_TRAIN_BATCH=16
DEMO_TRAIN_SEQ=256
DEMO_TRAIN_LR=5e-4
DEMO_TRAIN_WARMUP=10
