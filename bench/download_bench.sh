#!/usr/bin/env bash
# Download throughput of punie vs plain curl, same bytes, same local fake hub, same run.
#
#   bench/download_bench.sh [BUILD_DIR]
#
# Environment: BIG_MB (default 1024) size of the single big file, SMALL_MB (300) and SMALL_N (3) for the
# other files, BENCH_DIR (default /tmp/punie-download-bench) where the generated repo and downloads go,
# JOBS for punie --jobs (default: punie's own), ROUNDS (3) runs of each case. The generated repo is reused by
# later runs when sizes match.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
punie=$build/punie
BIG_MB=${BIG_MB:-1024}
SMALL_MB=${SMALL_MB:-300}
SMALL_N=${SMALL_N:-3}
ROUNDS=${ROUNDS:-3}
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

# Runs a command ROUNDS times from an empty output folder and prints "best_wall_s median_cpu_s" (CPU: user +
# system time of the command and its children). Best-of-N wall time because other processes may share the
# cores; CPU time is the steadier figure.
measure() {
    python3 "$dir/measure.py" "$ROUNDS" "$dir/out" "$@"
}
cat > "$dir/measure.py" <<'PY'
import os, resource, shutil, statistics, subprocess, sys, time
rounds, out, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
walls, cpus = [], []
for _ in range(rounds):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    os.sync()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    walls.append(time.monotonic() - t0)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
print("%.3f %.3f" % (min(walls), statistics.median(cpus)))
PY
sha() { grep " \*\?$1\$" "$dir/sha256" | cut -d' ' -f1; }
jobs_opt=()
[ -n "${JOBS:-}" ] && jobs_opt=(--jobs "$JOBS")

big_bytes=$(stat -c %s "$repo/big.safetensors")
all_bytes=0
names=()
for f in "$repo"/*.safetensors; do
    all_bytes=$((all_bytes + $(stat -c %s "$f")))
    names+=("$(basename "$f")")
done

# The baselines as small scripts, so that each is one measured command. With "verify", each file's sha256
# is computed after it arrives (openssl dgst: the fastest sha256 at hand; coreutils sha256sum is far slower).
fetch_script() { # FILE...
    echo "set -e"
    for n in "$@"; do
        echo "curl -sf -o '$dir/out/$n' 'http://127.0.0.1:$cdn_port/cdn/$(sha "$n")'"
        echo "if [ \"\${1:-}\" = verify ]; then openssl dgst -sha256 '$dir/out/$n' >/dev/null; fi"
    done
}
fetch_script big.safetensors > "$dir/curl_big.sh"
fetch_script "${names[@]}" > "$dir/curl_all.sh"

echo "Cores: $(nproc)   load: $(cut -d' ' -f1-3 /proc/loadavg)   big file: $((big_bytes / 1000000)) MB" \
     "  repo: $((all_bytes / 1000000)) MB in ${#names[@]} weight files   rounds: $ROUNDS"
read -r curl_big curl_big_cpu < <(measure bash "$dir/curl_big.sh")
read -r curlv_big curlv_big_cpu < <(measure bash "$dir/curl_big.sh" verify)
read -r punie_big punie_big_cpu < <(measure "$punie" download-model bench/model --models-dir "$dir/out/m" \
    --include big.safetensors --quiet "${jobs_opt[@]}")
read -r curl_all curl_all_cpu < <(measure bash "$dir/curl_all.sh")
read -r curlv_all curlv_all_cpu < <(measure bash "$dir/curl_all.sh" verify)
read -r punie_all punie_all_cpu < <(measure "$punie" download-model bench/model --models-dir "$dir/out/m" \
    --quiet "${jobs_opt[@]}")
# The last round's download must be complete and intact.
"$punie" verify bench/model --models-dir "$dir/out/m" >/dev/null && verified=yes || verified=NO

python3 - "$big_bytes" "$all_bytes" "$curl_big" "$curl_big_cpu" "$curlv_big" "$curlv_big_cpu" "$punie_big" \
    "$punie_big_cpu" "$curl_all" "$curl_all_cpu" "$curlv_all" "$curlv_all_cpu" "$punie_all" "$punie_all_cpu" <<'PY'
import sys
v = [float(x) for x in sys.argv[1:]]
big, allb = v[0], v[1]
rows = [("curl, big file", big, v[2], v[3]),
        ("curl + sha256, big file", big, v[4], v[5]),
        ("punie, big file (verified)", big, v[6], v[7]),
        ("curl, repo one file at a time", allb, v[8], v[9]),
        ("curl + sha256, repo one at a time", allb, v[10], v[11]),
        ("punie, repo (verified)", allb, v[12], v[13])]
print("\n%-36s %8s %8s %8s %9s" % ("case", "best s", "MB/s", "CPU s", "CPU s/GB"))
for name, b, w, c in rows:
    print("%-36s %8.2f %8.0f %8.2f %9.2f" % (name, w, b / w / 1e6, c, c / (b / 1e9)))
print("\npunie throughput / baseline throughput (goal: >= 0.9 vs curl on the big file, > 1 vs curl one file")
print("at a time on the repo; curl alone checks nothing, curl + sha256 is the like-for-like baseline):")
print("  big file: %.2fx curl   %.2fx curl + sha256" % (v[2] / v[6], v[4] / v[6]))
print("  repo:     %.2fx curl   %.2fx curl + sha256" % (v[8] / v[12], v[10] / v[12]))
PY
echo "punie verify after download: $verified"
