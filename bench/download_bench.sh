#!/usr/bin/env bash
# Download throughput of punie vs plain curl, same bytes, same local fake hub, same run.
#
#   bench/download_bench.sh [BUILD_DIR]
#
# Environment: BIG_MB (default 1024) size of the single big file, SMALL_MB (300) and SMALL_N (3) for the
# other files, BENCH_DIR (default /tmp/punie-download-bench) where the generated repo and downloads go,
# JOBS (8) for punie --jobs. The generated repo is reused by later runs when sizes match.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
punie=$build/punie
BIG_MB=${BIG_MB:-1024}
SMALL_MB=${SMALL_MB:-300}
SMALL_N=${SMALL_N:-3}
JOBS=${JOBS:-8}
dir=${BENCH_DIR:-/tmp/punie-download-bench}
repo=$dir/repo
[ -x "$punie" ] || { echo "build punie first (no $punie)" >&2; exit 1; }

stamp="$BIG_MB $SMALL_MB $SMALL_N"
if [ "$(cat "$dir/stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "Generating the repository ($BIG_MB MB + $SMALL_N x $SMALL_MB MB of random bytes)..."
    rm -rf "$dir"
    mkdir -p "$repo"
    head -c "${BIG_MB}M" /dev/urandom > "$repo/big.safetensors"
    for i in $(seq 1 "$SMALL_N"); do
        head -c "${SMALL_MB}M" /dev/urandom > "$repo/part-$i.safetensors"
    done
    (cd "$repo" && sha256sum -- *.safetensors > "$dir/sha256")
    echo "$stamp" > "$dir/stamp"
fi
# Small files so that the result is a complete model folder that punie verify accepts.
echo '{"model_type": "bench"}' > "$repo/config.json"
echo '{"version": "1.0"}' > "$repo/tokenizer.json"
echo '{}' > "$repo/tokenizer_config.json"
printf '{"weight_map": {"w": "big.safetensors"}}' > "$repo/model.safetensors.index.json"

rm -f "$dir/port"
python3 "$here/tools/fake_hub.py" --quiet --port 0 --port-file "$dir/port" \
    --repo "bench/model=$repo" --sha256-file "$dir/sha256" &
hub_pid=$!
trap 'kill $hub_pid 2>/dev/null; rm -rf "$dir/out"' EXIT
for _ in $(seq 1 600); do [ -s "$dir/port" ] && break; sleep 0.1; done
port=$(cat "$dir/port")
cdn_port=$(curl -s "http://127.0.0.1:$port/_info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cdn_port"])')
export HF_ENDPOINT=http://127.0.0.1:$port

now() { date +%s.%N; }
rate() { python3 -c "import sys; b,t=float(sys.argv[1]),float(sys.argv[2]); print('%.0f' % (b/t/1e6))" "$1" "$2"; }
elapsed() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }
sha() { grep " \*\?$1\$" "$dir/sha256" | cut -d' ' -f1; }
fresh() { rm -rf "$dir/out"; mkdir -p "$dir/out"; sync; }

big_bytes=$(stat -c %s "$repo/big.safetensors")
all_bytes=0
for f in "$repo"/*.safetensors; do all_bytes=$((all_bytes + $(stat -c %s "$f"))); done

echo "Cores: $(nproc)   big file: $((big_bytes / 1000000)) MB   repo: $((all_bytes / 1000000)) MB in $((SMALL_N + 1)) weight files"

# 1. One big file: curl straight from the CDN listener vs punie (resolve + parallel ranges + sha256).
fresh
t0=$(now); curl -s -o "$dir/out/big.bin" "http://127.0.0.1:$cdn_port/cdn/$(sha big.safetensors)"; t1=$(now)
curl_big=$(elapsed "$t0" "$t1")
# The same, plus checking the sha256 afterwards: what a verified curl download costs.
t0=$(now); openssl dgst -sha256 "$dir/out/big.bin" >/dev/null; t1=$(now)
curl_big_verified=$(python3 -c "import sys; print('%.3f' % (float(sys.argv[1]) + float(sys.argv[2]) - float(sys.argv[3])))" "$curl_big" "$t1" "$t0")
fresh
t0=$(now); "$punie" download-model bench/model --models-dir "$dir/out/m" --include big.safetensors --quiet --jobs "$JOBS" >/dev/null; t1=$(now)
punie_big=$(elapsed "$t0" "$t1")

# 2. The whole repo: curl one file after another vs punie.
fresh
t0=$(now)
for f in "$repo"/*.safetensors; do
    curl -s -o "$dir/out/$(basename "$f")" "http://127.0.0.1:$cdn_port/cdn/$(sha "$(basename "$f")")"
done
t1=$(now)
curl_all=$(elapsed "$t0" "$t1")
fresh
t0=$(now); "$punie" download-model bench/model --models-dir "$dir/out/m" --quiet --jobs "$JOBS" >/dev/null; t1=$(now)
punie_all=$(elapsed "$t0" "$t1")
"$punie" verify bench/model --models-dir "$dir/out/m" >/dev/null && verified=yes || verified=NO

printf '\n%-34s %10s %10s\n' "case" "seconds" "MB/s"
printf '%-34s %10s %10s\n' "curl, big file" "$curl_big" "$(rate "$big_bytes" "$curl_big")"
printf '%-34s %10s %10s\n' "curl + openssl sha256, big file" "$curl_big_verified" "$(rate "$big_bytes" "$curl_big_verified")"
printf '%-34s %10s %10s\n' "punie, big file (verified)" "$punie_big" "$(rate "$big_bytes" "$punie_big")"
printf '%-34s %10s %10s\n' "curl, repo one file at a time" "$curl_all" "$(rate "$all_bytes" "$curl_all")"
printf '%-34s %10s %10s\n' "punie, repo (verified)" "$punie_all" "$(rate "$all_bytes" "$punie_all")"
python3 -c "import sys; a,b,c,d,e=map(float,sys.argv[1:]); print('\nratio punie/curl throughput: big file %.2fx (vs curl+sha256: %.2fx), repo %.2fx' % (a/b, e/b, c/d))" \
    "$curl_big" "$punie_big" "$curl_all" "$punie_all" "$curl_big_verified"
echo "punie verify after download: $verified"
