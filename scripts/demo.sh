#!/usr/bin/env bash
# punie's main job end to end on an embedded default, on a fresh Debian machine (as root):
# install dependencies, build, then download a tiny random-weight model in the mlx-community layout
# from a local hub on 127.0.0.1 and serve it on the OpenAI-compatible API, asking it one question.
# The real Hub is not needed: the demo model is generated here and paired with the real Qwen2.5
# tokenizer files kept in assets/ (see assets/qwen2.5-tokenizer/NOTICE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bash scripts/install-deps.sh
scripts/build.sh
punie="$root/build/punie"

work=$(mktemp -d "${TMPDIR:-/tmp}/punie-demo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

repo=punie-demo/tiny-random-qwen2-4bit
echo "==> Generating the demo model (random weights, MLX 4-bit layout) for $repo"
"$root/build/gen_model" --out "$work/repo" --tokenizer "$root/assets/qwen2.5-tokenizer" \
  --hidden 256 --intermediate 640 --layers 2 --heads 2 --kv-heads 1 --vocab 152064 --seed 7 >/dev/null

echo "==> Starting a local hub on 127.0.0.1"
python3 "$root/tools/fake_hub.py" --quiet --repo "$repo=$work/repo" --port 0 --port-file "$work/hub.port" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/hub.port" ] && break; sleep 0.1; done
export HF_ENDPOINT="http://127.0.0.1:$(cat "$work/hub.port")"

echo "==> punie download-model $repo"
"$punie" download-model "$repo" --models-dir "$work/models"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "==> punie serve --model local:$repo --port $port"
"$punie" serve --model "local:$repo" --models-dir "$work/models" --port "$port" &
pids+=($!)
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

echo "==> POST /v1/chat/completions"
curl -sS "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"Write a hello world in C."}],"max_tokens":24,"temperature":0}'
echo
echo "==> Done. The demo model has random weights, so its reply is gibberish; with a real model:"
echo "    punie download-model && punie serve --model local"
