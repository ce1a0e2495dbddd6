#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) into build-fuzz (or $BUILD_DIR) and runs each one
# for a fixed number of executions over its seed corpus (ctest -L fuzz). Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-fuzz}
CC=${FUZZ_CC:-clang} cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPUNIE_FUZZ=ON -DPUNIE_SANITIZE=ON \
  ${FUZZ_RUNS:+-DPUNIE_FUZZ_RUNS=$FUZZ_RUNS} >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzzers
cd "$build"
ctest --output-on-failure -L fuzz -j"$(nproc)" "$@"
