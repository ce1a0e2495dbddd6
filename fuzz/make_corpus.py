#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target from the shared fixtures (nothing large is committed).

Layout: OUT/<target>/<seed files>. Inputs with two parts join them with the line "\\n----\\n"
(see fuzz/fuzz.h: fuzz_split). Also empties WORK/<target>/, where a run keeps what it discovers.
"""
import argparse
import hashlib
import json
import os
import shutil
import struct

SEP = b"\n----\n"


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def jdump(obj):
    return json.dumps(obj, ensure_ascii=False, indent=1)


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, payload bytes)] -> a safetensors file."""
    header, blob = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(payload)]}
        blob += payload
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def seeds_safetensors(shared, out):
    t = "fuzz_safetensors"
    q = [("model.layers.0.mlp.up_proj.weight", "U32", [4, 8], bytes(range(128))),
         ("model.layers.0.mlp.up_proj.scales", "BF16", [4, 1], b"\x80\x3f" * 4),
         ("model.layers.0.mlp.up_proj.biases", "BF16", [4, 1], b"\x00\xbf" * 4),
         ("model.norm.weight", "BF16", [8], b"\x80\x3f" * 8),
         ("scalar", "F32", [], b"\x00\x00\x80\x3f"),
         ("empty", "F16", [0, 3], b"")]
    write(out, t, "quantized", safetensors(q, {"format": "mlx"}))
    write(out, t, "one_f32", safetensors([("x", "F32", [2, 3], bytes(24))]))
    write(out, t, "no_metadata", safetensors(q[:3]))
    write(out, t, "i8_u8_i32", safetensors([("a", "I8", [3], b"\x01\x02\x03"), ("b", "U8", [1], b"\x04"),
                                            ("c", "I32", [1, 1], b"\x05\x00\x00\x00")]))
    # The real file's header (every tensor name and shape of the fixture model) over a short body.
    path = os.path.join(shared, "fixtures/models/tiny-random-qwen2-4bit/model.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = f.read(n)
    write(out, t, "real_header_truncated", struct.pack("<Q", n) + header + bytes(64))
    # The sharded form: an index naming the one shard, then the shard.
    index = {"metadata": {"total_size": 128}, "weight_map": {name: "model-00001-of-00001.safetensors"
                                                             for name, _, _, _ in q[:3]}}
    write(out, t, "index_and_shard", json.dumps(index).encode() + SEP + safetensors(q[:3], {"format": "mlx"}))
    write(out, t, "index_escape", json.dumps({"weight_map": {"a": "../model.safetensors"}}).encode() + SEP)


def seeds_config(shared, out):
    t = "fuzz_config"
    base = json.load(open(os.path.join(shared, "fixtures/models/tiny-random-qwen2-4bit/config.json")))
    write(out, t, "tiny", jdump(base))
    big = dict(base, hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_hidden_layers=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
    write(out, t, "7b", jdump(big))
    v = dict(base)
    v["quantization"] = {"bits": 8, "group_size": 32, "model.embed_tokens": {"bits": 4, "group_size": 64},
                         "lm_head": False}
    write(out, t, "per_layer_quant", jdump(v))
    v = {k: x for k, x in base.items() if not k.startswith("quantization")}
    write(out, t, "unquantized", jdump(v))
    write(out, t, "tied", jdump(dict(base, tie_word_embeddings=True, head_dim=128)))


def small_tokenizer(tok, keep, renumber):
    vocab = {s: i for s, i in tok["model"]["vocab"].items() if i < keep}
    merges = []
    for m in tok["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    small = dict(tok)
    small["model"] = dict(tok["model"], vocab=vocab, merges=merges)
    added = []
    for i, a in enumerate(tok["added_tokens"][:6]):
        added.append(dict(a, id=keep + i) if renumber else a)
    small["added_tokens"] = added
    return small


def seeds_tokenizer(shared, out):
    tdir = os.path.join(shared, "fixtures/qwen2.5-tokenizer")
    tok = json.load(open(os.path.join(tdir, "tokenizer.json"), encoding="utf-8"))
    cfg = json.load(open(os.path.join(tdir, "tokenizer_config.json"), encoding="utf-8"))
    small_cfg = {k: v for k, v in cfg.items() if k != "chat_template"}
    small_cfg["added_tokens_decoder"] = {}
    for name, keep, renumber in (("small300", 300, True), ("small1000", 1000, True), ("gap", 600, False)):
        body = json.dumps(small_tokenizer(tok, keep, renumber), ensure_ascii=False).encode()
        write(out, "fuzz_tokenizer_load", name, body + SEP + json.dumps(small_cfg).encode())
    vec = json.load(open(os.path.join(shared, "fixtures/tokenizer/qwen2-bpe-vectors.json"), encoding="utf-8"))
    for i, case in enumerate(vec["cases"]):
        write(out, "fuzz_tokenizer_roundtrip", "case%02d" % i, case["text"])
    for i, s in enumerate(["Hello world", "<|im_start|>hello<|im_end|>", "\t\n\n  x", "ied 4 ½ months",
                           "<|endoftext|><|im_start|", b"\xff\xfe invalid \xc3", "def f(x):\n    return x**2\n"]):
        write(out, "fuzz_tokenizer_roundtrip", "extra%02d" % i, s)
    # The decoder side takes raw little-endian ids: a few real id sequences.
    for i, case in enumerate(vec["cases"][:10]):
        write(out, "fuzz_tokenizer_decode", "case%02d" % i, struct.pack("<%di" % len(case["ids"]), *case["ids"]))
    write(out, "fuzz_tokenizer_decode", "special", struct.pack("<6i", 151644, 14990, 151645, 151643, -1, 999999))


def seeds_chat(shared, out):
    tdir = os.path.join(shared, "fixtures/qwen2.5-tokenizer")
    template = json.load(open(os.path.join(tdir, "tokenizer_config.json"), encoding="utf-8"))["chat_template"]
    cdir = os.path.join(shared, "fixtures/chat-template")
    inputs = []
    for name in sorted(os.listdir(cdir)):
        if name.endswith(".json") and not name.endswith(".ids.json"):
            inputs.append((name[:-5], open(os.path.join(cdir, name), "rb").read()))
    small = ["{% for m in messages %}{{ m.role }}: {{ m.content | trim }}\n{% endfor %}",
             "{%- if tools %}{{ tools | tojson }}{% endif %}{% set x = 1 %}{{ x + 2 }}{{ 'a' ~ 'b' }}",
             "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}none{% endif %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
             "{{ messages | length }}{% for m in messages[1:] %}{{ loop.index }}{{ loop.last }}{% endfor %}"
             "{{ raise_exception('x') if false }}{{ 'x' if true else 'y' }}{{ m.tool_calls is defined }}"]
    for name, body in inputs:
        write(out, "fuzz_chat_template", name, template.encode() + SEP + body)
        write(out, "fuzz_chat_messages", name, body)
    for i, tpl in enumerate(small):
        write(out, "fuzz_chat_template", "small%d" % i, tpl.encode() + SEP + inputs[0][1])
    # Request bodies of the chat API.
    rdir = os.path.join(shared, "fixtures/reference/tiny-random-qwen2-4bit")
    for name in sorted(os.listdir(rdir)):
        if name.endswith(".request.json"):
            write(out, "fuzz_chat_request", name[:-13], b"\x00" + open(os.path.join(rdir, name), "rb").read())
    for name, body in inputs:
        req = json.loads(body)
        req.update(model="local", max_tokens=16, temperature=0.7, top_p=0.9, stream=name.startswith("0"),
                   stop=["\n\n", "<|im_end|>"], seed=7)
        req.pop("add_generation_prompt", None)
        write(out, "fuzz_chat_request", name, b"\x00" + jdump(req).encode())
    write(out, "fuzz_chat_request", "completion", b"\x01" + jdump(
        {"prompt": "def f(", "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True},
         "logprobs": True, "top_logprobs": 5, "seed": 18446744073709551615, "stop": "\n"}).encode())
    write(out, "fuzz_chat_request", "fields", b"\x00" + jdump(
        {"messages": [{"role": "system", "content": None}, {"role": "user", "content": [{"type": "text",
         "text": "a"}]}], "max_completion_tokens": 1e300, "temperature": -1, "top_p": 2, "top_k": -5,
         "min_p": 0.5, "repetition_penalty": 0, "repetition_context_size": 1e9, "presence_penalty": 1e308,
         "frequency_penalty": -2, "tool_choice": "none", "tools": [], "logit_bias": {"5": 3}}).encode())


def seeds_hub(shared, out):
    mdir = os.path.join(shared, "fixtures/models/tiny-random-qwen2-4bit")
    commit = hashlib.sha1(b"punie").hexdigest()
    tree, siblings = [], []
    for name in sorted(os.listdir(mdir)):
        p = os.path.join(mdir, name)
        size = os.path.getsize(p)
        entry = {"type": "file", "oid": hashlib.sha1(name.encode()).hexdigest(), "size": size, "path": name}
        if name.endswith(".safetensors"):
            entry["lfs"] = {"oid": hashlib.sha256(name.encode()).hexdigest(), "size": size, "pointerSize": 134}
        tree.append(entry)
        siblings.append({"rfilename": name})
    tree.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": "sub"})
    write(out, "fuzz_hub_json", "tree", b"\x00" + jdump(tree).encode())
    write(out, "fuzz_hub_json", "tree_nested", b"\x00" + jdump(tree + [{"type": "file", "oid": "1" * 40, "size": 3,
                                                                      "path": "sub/../../x"}]).encode())
    info = {"_id": "x", "id": "mlx-community/tiny", "sha": commit, "private": False, "gated": False,
            "disabled": False, "siblings": siblings}
    write(out, "fuzz_hub_json", "revision", b"\x01" + jdump(info).encode())
    write(out, "fuzz_hub_json", "gated", b"\x01" + jdump(dict(info, gated="manual", private=True)).encode())
    write(out, "fuzz_hub_json", "error", b"\x01" + jdump({"error": "Repository not found"}).encode())
    write(out, "fuzz_hub_json", "sidecar", b"\x02punie-partial 1 44579402 2\n0 22289701 1000\n22289701 44579402 0\n")
    write(out, "fuzz_hub_json", "sidecar1", b"\x02punie-partial 1 44579402 1\n0 44579402 44579402\n")
    heads = [
        "HTTP/1.1 302 Found\r\nLocation: https://cdn-lfs.hf.co/repos/ab/cd?X-Amz=1\r\n"
        "X-Linked-Etag: \"%s\"\r\nX-Linked-Size: 44579402\r\nX-Repo-Commit: %s\r\nETag: W/\"abc\"\r\n"
        "Content-Length: 1234\r\n\r\n" % (hashlib.sha256(b"x").hexdigest(), commit),
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: /api/resolve-cache/models/a/b/%s/config.json?etag=%%22x%%22\r\n"
        "\r\n" % commit,
        "HTTP/2 200\r\nETag: \"%s\"\r\nX-Repo-Commit: %s\r\nContent-Length: 860\r\ncontent-type: application/json\r\n"
        "Link: <https://huggingface.co/api/models/a/b/tree/main?cursor=abc>; rel=\"next\"\r\n\r\n"
        % (hashlib.sha1(b"y").hexdigest(), commit),
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-199/44579402\r\nContent-Length: 100\r\n\r\n",
        "HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nX-Error-Message: Entry not found\r\n"
        "X-Repo-Commit: %s\r\n\r\n" % commit,
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nRateLimit: \"api\";r=0;t=55\r\n\r\n",
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 99999999999999999999\r\n"
        "RateLimit: \"api\";r=0;t=99999999999999999999\r\nX-Linked-Size: 99999999999999999999\r\n\r\n",
    ]
    for i, h in enumerate(heads):
        write(out, "fuzz_hub_headers", "head%d" % i, h)


def seeds_reply_text(shared, out):
    """Model replies (tool calls in every form the server accepts) and stop strings."""
    replies = ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
               'Sure.\n```json\n{"name": "run", "arguments": {"cmd": "make test"}}\n```\nDone.',
               '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}\n{"name": "run", "arguments": {}}',
               'text <tool_call>{"name": "nope"</tool_call> more <tool_call>{"name": "x", "arguments": [1]}',
               '```python\nprint(1)\n```\n  {"a": 1}\n{"name": "run", "arguments": {"s": "}\\"{"}}']
    for i, r in enumerate(replies):
        for opt in (b"\x01", b"\x00", b"\x2b"):
            write(out, "fuzz_tool_calls", "r%d_%d" % (i, opt[0]), opt + r.encode())
    for i, (stops, text) in enumerate([("\n\n", "a\nb\n\nc"), ("<|im_end|>\nend", "x<|im_end|>y"),
                                       ("aab\nab", "aaab"), ("", "no stops at all")]):
        write(out, "fuzz_stop_filter", "s%d" % i, stops + "\n----\n" + text)


def seeds_repo_id(shared, out):
    for i, r in enumerate(["mlx-community/Qwen2.5-Coder-7B-Instruct-4bit", "a/b", "a..b/c", "../x", "a/b/c",
                           "-a/b", "x" * 97 + "/y", "org/na_me.v2"]):
        write(out, "fuzz_repo_id", "r%d" % i, r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    for gen in (seeds_safetensors, seeds_config, seeds_tokenizer, seeds_chat, seeds_hub, seeds_reply_text, seeds_repo_id):
        gen(a.shared, a.out)
    # Every target gets an empty working folder (libFuzzer writes new inputs there).
    for name in os.listdir(os.path.join(a.source, "fuzz")):
        if name.startswith("fuzz_") and name.endswith(".c"):
            target = name[:-2]
            os.makedirs(os.path.join(a.out, target), exist_ok=True)
            shutil.rmtree(os.path.join(a.work, target), ignore_errors=True)
            os.makedirs(os.path.join(a.work, target))


if __name__ == "__main__":
    main()
