#!/usr/bin/env bash
# Long fuzzing runs: builds the fuzz targets (scripts/test-fuzz.sh's build) and runs each named target
# (default: all) for FUZZ_SECONDS (default 600) over its seed corpus, keeping what it discovers in
# build-fuzz/fuzz/work/<target>/ for the next run. Crashes are written there as crash-*/leak-*/timeout-*.
#   scripts/fuzz-long.sh                      # every target, 10 minutes each
#   FUZZ_SECONDS=3600 scripts/fuzz-long.sh fuzz_chat_template
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-600}
CC=${FUZZ_CC:-clang} cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPUNIE_FUZZ=ON -DPUNIE_SANITIZE=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzzers
work=$build/fuzz/work
corpus=$build/fuzz/corpus-long
python3 fuzz/make_corpus.py --shared "${PUNIE_SHARED_DIR:-../shared}" --source . --out "$corpus" --work "$build/fuzz/work-scratch"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.c; do n=${f##*/}; targets+=("${n%.c}"); done
fi
export PUNIE_SHARED_DIR=$(cd "${PUNIE_SHARED_DIR:-../shared}" && pwd)
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  dict=()
  [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  echo "== $t: $seconds s"
  rc=0
  "$build/fuzz/$t" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$work/$t-" "${dict[@]}" "$work/$t" "$corpus/$t" >"$work/$t.log" 2>&1 || rc=$?
  grep -E '^(Done|stat::number|SUMMARY|artifact_prefix|==[0-9]+==ERROR)' "$work/$t.log" || true
  [ $rc -eq 0 ] || failed+=("$t")
done
if [ ${#failed[@]} -gt 0 ]; then echo "crashed: ${failed[*]} (inputs in $work)"; exit 1; fi
echo "all targets ran $seconds s without a crash"
