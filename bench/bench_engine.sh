#!/usr/bin/env bash
# Engine benchmark: generates random-weight models with the real Qwen2.5-Coder 3B and 7B dimensions in
# the mlx-community layout (4-bit, group 64, F16 scales; 3B tied, 7B untied) and runs bench_engine on
# each: memory bandwidth, load, prefill (512-token prompt), time to first token, decode, peak RSS.
#   bench/bench_engine.sh [3b] [7b]     (default: both; BUILD_DIR=build, THREADS=all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
OUT=${BENCH_MODELS:-$BUILD_DIR/bench-models}
THREADS=${THREADS:-0}
PROMPT=${PROMPT_TOKENS:-512}
GEN=${GEN_TOKENS:-32}
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(3b 7b)

for t in gen_model bench_engine; do
  [ -x "$BUILD_DIR/$t" ] || { echo "build first: $BUILD_DIR/$t is missing" >&2; exit 1; }
done

for size in "${sizes[@]}"; do
  case $size in
    3b) dims="--hidden 2048 --intermediate 11008 --layers 36 --heads 16 --kv-heads 2 --vocab 151936 --tied" ;;
    7b) dims="--hidden 3584 --intermediate 18944 --layers 28 --heads 28 --kv-heads 4 --vocab 152064" ;;
    *) echo "unknown size $size (3b or 7b)" >&2; exit 2 ;;
  esac
  dir="$OUT/qwen2.5-coder-$size-random-4bit"
  if [ ! -f "$dir/.complete" ]; then
    echo "generating $dir ..." >&2
    start=$(date +%s)
    "$BUILD_DIR/gen_model" --out "$dir" $dims --bits 4 --group 64 --scale-dtype f16 --fast --seed 1
    touch "$dir/.complete"
    echo "generated in $(( $(date +%s) - start )) s" >&2
  fi
  echo "=== $size (cores online: $(nproc)) ==="
  "$BUILD_DIR/bench_engine" --model "$dir" --threads "$THREADS" --prompt-tokens "$PROMPT" --gen-tokens "$GEN"
done
