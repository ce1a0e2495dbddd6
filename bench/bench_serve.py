#!/usr/bin/env python3
"""Serving benchmark for `punie serve` (run by hand, never by ctest).

1. Overhead: decode tokens/s of one streamed request through the server versus `punie generate` on the
   same prompt, same model, same thread count (ratio < 1 means the server loses speed).
2. Load: aggregate tokens/s and request latency with 1, 2 and 4 concurrent clients (server --parallel 4).

usage: bench_serve.py [--bin build/punie] [--model DIR] [--threads N] [--tokens N] [--requests N] [--rounds N]

The baseline is `punie generate` when it reports "Generation: N tokens, X tokens-per-sec", and always
bench_serve_direct (the server's engine without HTTP). A bigger random model for a realistic ratio:
  build/gen_model --out /tmp/m --hidden 1024 --intermediate 2816 --layers 8 --heads 8 --kv-heads 2 \
      --vocab 152064 --tokenizer $PUNIE_SHARED_DIR/fixtures/models/tiny-random-qwen2-4bit --fast
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROMPT = "Write a C function that reverses a string in place."


def start_server(args, parallel):
    cmd = [args.bin, "serve", "--model", args.model, "--port", "0", "--threads", str(args.threads),
           "--parallel", str(parallel), "--ctx-size", str(args.ctx)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if "started on http://" in line:
            port = int(line.strip().rsplit(":", 1)[1])
            threading.Thread(target=p.stdout.read, daemon=True).start()
            return p, port
    raise SystemExit("server did not start")


def stream_request(port, max_tokens):
    """Returns (completion tokens, seconds to first token, decode tokens/s, total seconds)."""
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0,
            "repetition_penalty": 1, "stream": True, "stream_options": {"include_usage": True},
            "logprobs": False}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    first = last = None
    tokens = 0
    buf = b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                continue
            obj = json.loads(ev[6:])
            now = time.perf_counter()
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
            elif obj["choices"] and obj["choices"][0]["delta"].get("content"):
                if first is None:
                    first = now
                last = now
    c.close()
    total = time.perf_counter() - t0
    decode = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else float("nan")
    return tokens, (first or t0) - t0, decode, total


def generate_speed(args, direct=False):
    """Decode tokens/s of `punie generate`, or (direct) of the server's engine without HTTP."""
    if direct:
        cmd = [os.path.join(os.path.dirname(args.bin), "bench_serve_direct"), args.model, str(args.threads),
               str(args.tokens), PROMPT]
    else:
        cmd = [args.bin, "generate", "--model", args.model, "--threads", str(args.threads), "--max-tokens",
               str(args.tokens), "--temp", "0", "--prompt", PROMPT]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = r.stdout + r.stderr
    m = re.search(r"Generation:\s*(\d+)\s*tokens,\s*([\d.]+)\s*tokens-per-sec", text)
    if r.returncode != 0:
        return None, f"{os.path.basename(cmd[0])} failed ({r.returncode}): {text.strip()[-300:]}"
    if m:
        # `generate` divides N tokens by the time of N-1 decode steps (the first token comes from the
        # prompt's logits); the server and direct figures are (N-1)/time, so compare per decode step.
        n, rate = int(m.group(1)), float(m.group(2))
        if not direct and n > 1:
            rate *= (n - 1) / n
        return rate, f"{n} tokens"
    return None, "no 'Generation: N tokens, X tokens-per-sec' line in its output (wall %.2fs)" % wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "punie"))
    shared = os.environ.get("PUNIE_SHARED_DIR", os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--model", default=os.path.join(shared, "fixtures", "models", "tiny-random-qwen2-4bit"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=4, help="requests per client in the load test")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs in the overhead comparison")
    args = ap.parse_args()
    print(f"model {args.model}, {args.threads} threads, {args.tokens} tokens per request, {os.cpu_count()} cores")

    # 1. overhead: runs alternate between the baselines and the server so that load from other
    # processes hits both alike; the best of each is compared.
    p, port = start_server(args, 1)
    gen_runs, direct_runs, runs = [], [], []
    try:
        stream_request(port, 8)  # warm-up
        for _ in range(args.rounds):
            gen_runs.append(generate_speed(args))
            direct_runs.append(generate_speed(args, direct=True))
            runs.append(stream_request(port, args.tokens))
    finally:
        p.terminate()
        p.wait()
    ok = [g for g in gen_runs if g[0]]
    gen_tps, note = (max(g[0] for g in ok), ok[0][1]) if ok else gen_runs[0]
    ok = [g for g in direct_runs if g[0]]
    direct_tps, direct_note = (max(g[0] for g in ok), ok[0][1]) if ok else direct_runs[0]
    srv_tps = max(r[2] for r in runs)
    print(f"serve, 1 client, streamed: decode {srv_tps:.1f} tok/s (best of {len(runs)}; median "
          f"{statistics.median(r[2] for r in runs):.1f}), first token {statistics.median(r[1] for r in runs) * 1000:.0f} ms")
    if gen_tps:
        print(f"punie generate: decode {gen_tps:.1f} tok/s ({note})")
        print(f"serving / generate tokens/s ratio: {srv_tps / gen_tps:.3f} ({(1 - srv_tps / gen_tps) * 100:+.1f}% lost)")
    else:
        print(f"punie generate: {note}")
    if direct_tps:
        print(f"engine without HTTP: decode {direct_tps:.1f} tok/s ({direct_note})")
        print(f"serving / direct engine tokens/s ratio: {srv_tps / direct_tps:.3f} "
              f"({(1 - srv_tps / direct_tps) * 100:+.1f}% lost)")

    # 2. load
    p, port = start_server(args, 4)
    try:
        stream_request(port, 8)
        base = None
        for clients in (1, 2, 4):
            lat, toks = [], []
            lock = threading.Lock()

            def client():
                for _ in range(args.requests):
                    n, ttft, dec, total = stream_request(port, args.tokens)
                    with lock:
                        lat.append(total)
                        toks.append(n)

            t0 = time.perf_counter()
            ts = [threading.Thread(target=client) for _ in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.perf_counter() - t0
            agg = sum(toks) / wall
            base = base or agg
            print(f"{clients} client(s): {len(lat)} requests, aggregate {agg:.1f} tok/s ({agg / base:.2f}x of 1 client), "
                  f"latency median {statistics.median(lat):.2f} s, max {max(lat):.2f} s")
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main()
