#!/usr/bin/env bash
# dha against the real llama.cpp runtime (llama-cpp-python, built by
# scripts/setup): prints the figures of the llama.cpp tests.
#   - SmolLM2-135M-Instruct Q4_1 loaded by both: mean NLL of the same token ids
#     (llama.cpp's tokenizer) and where 40-token greedy continuations part;
#   - demo-mha with per-layer GQA [8,4,2,1,2,4] and a dha-converted demo-mha
#     (--budget 0.25), exported as GGUF f32: the KV heads per layer and the KV
#     cache llama.cpp allocates against dha's accounting, the NLL of the same
#     ids, and llama.cpp's tokenizer against dha's.
# The checks themselves are tests/test_llama_cpp.cpp; this runs them and keeps
# their figure lines.
#
# usage: scripts/experiments/llama_cpp_parity.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${DHA_BUILD_DIR:-"$ROOT/build"}
TESTS="$BIN/tests/dha_tests"
[ -x "$TESTS" ] || { echo "llama_cpp_parity.sh: $TESTS is missing; build first (cmake --build build --target dha_tests)" >&2; exit 1; }
"$ROOT/.venv/bin/python" -c "import llama_cpp" 2>/dev/null ||
  { echo "llama_cpp_parity.sh: .venv has no llama_cpp; run scripts/setup (it builds llama-cpp-python)" >&2; exit 1; }

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
status=0
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$TESTS" \
  --gtest_filter='LlamaCppSmolLM2.*:LlamaCpp.PerLayerGqaDemoModelRunsAsDeciWithItsKvSavings:LlamaCpp.DhaConvertedDemoModelRunsInLlamaCpp' \
  > "$LOG" 2>&1 || status=$?
grep -E '^(SmolLM2|llama\.cpp |dha-convert|  dha:|  llama\.cpp:|\[  (PASSED|FAILED|  SKIPPED) )' "$LOG" || true
if [ "$status" -ne 0 ]; then
  echo "llama_cpp_parity.sh: the tests failed; their output:" >&2
  tail -40 "$LOG" >&2
fi
exit "$status"
