#!/usr/bin/env bash
# The one script for the GPU machine, in a single device call from the repository root:
#   run(command="bash scripts/device_run.sh", carry=[".debs"], timeout_s=600)
# after scripts/device_prepare.sh has filled .debs/ here. It builds with the
# machine's PyTorch (python3) and nvcc plus the carried Debian packages (unpacked
# into a private prefix), runs the attention tests (GPU ones included),
# compute-sanitizer (memcheck, racecheck) on a small case of every kernel family,
# and the three benchmarks. Logs go to $OUT (at most 8 files come back); the
# summary is printed last. STAGES="build test sanitize bench" selects steps.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-"$ROOT/build-device/out"}
BUILD=${DHA_BUILD_DIR:-"$ROOT/build-device"}
PREFIX=${DHA_DEBS_PREFIX:-/tmp/dha-debs}
STAGES=${STAGES:-"build test sanitize bench"}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME SECONDS COMMAND...: runs with a time limit, log in $OUT/NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  note "$(printf '%-16s rc=%-3s %4ss  (log: %s.log)' "$name" "$rc" "$((SECONDS - t0))" "$name")"
  return $rc
}

has_stage() { [[ " $STAGES " == *" $1 "* ]]; }

note "== dha device run $(date -u +%FT%TZ)"
note "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
note "$(nvcc --version 2>&1 | tail -1)"
note "$(python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1)"

# --- the carried Debian packages, unpacked beside the system -------------------
if ls .debs/*.deb >/dev/null 2>&1; then
  mkdir -p "$PREFIX"
  for deb in .debs/*.deb; do dpkg-deb -x "$deb" "$PREFIX"; done
else
  note "no .debs/: run scripts/device_prepare.sh here and carry .debs"
fi
LIBDIR="$PREFIX/usr/lib/x86_64-linux-gnu"
export PATH="$PATH:$PREFIX/usr/bin"  # pkg-config only if the image has none
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_LIBDIR="$LIBDIR/pkgconfig:$PREFIX/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$PREFIX"

TESTS="$BUILD/tests/dha_tests"
FILTER='AttentionOp*:AttentionPlan*:GroupedAttention*:Model*'

if has_stage build; then
  step configure 180 cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DDHA_PYTHON="$(command -v python3)" -DCMAKE_PREFIX_PATH="$PREFIX/usr" \
    -DCMAKE_CXX_FLAGS="-isystem $PREFIX/usr/include" -DDHA_KERNELS_RESOURCE_USAGE=ON &&
    step build 420 ninja -C "$BUILD" -j "$(nproc)" dha_tests bench_attention_prefill \
      bench_attention_backward bench_attention_decode
  cat "$OUT/configure.log" >>"$OUT/build.log" 2>/dev/null && rm -f "$OUT/configure.log"
  grep -E "dha: (CUDA kernels|LibTorch)" "$OUT/build.log" | tee -a "$SUMMARY"
  # Registers / spills of the attention kernels (ptxas -v), for the notes.
  grep -A2 -E "Compiling entry function.*(forward|backward|decode)_kernel.*sm_90a" "$OUT/build.log" |
    grep -E "Used|spill" | sed 's/^ */  ptxas: /' | sort | uniq -c | tee -a "$SUMMARY"
fi

if has_stage test; then
  step tests 240 "$TESTS" --gtest_filter="$FILTER"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$OUT/tests.log" | tee -a "$SUMMARY"
fi

if has_stage sanitize; then
  for tool in memcheck racecheck; do
    step "$tool" 240 compute-sanitizer --tool "$tool" --error-exitcode 99 \
      "$TESTS" --gtest_filter='AttentionOpCuda.SanitizerSmallCase'
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard" "$OUT/$tool.log" | head -5 | tee -a "$SUMMARY"
  done
fi

if has_stage bench; then
  step bench_prefill 150 "$BUILD/bench/bench_attention_prefill" --seq 4096,8192
  step bench_backward 150 "$BUILD/bench/bench_attention_backward" --seq 4096,8192
  step bench_decode 150 "$BUILD/bench/bench_attention_decode" --batch 1,8 --cache 8192,32768
  for b in prefill backward decode; do grep -v "^$" "$OUT/bench_$b.log" | tee -a "$SUMMARY"; done
fi

note "== done"
