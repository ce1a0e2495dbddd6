"""punie tokenize end to end: the real binary on the fixture model folder and a models directory."""
import json
import os
import random
import subprocess
import tempfile
import unicodedata
import unittest

BIN = os.environ["PUNIE_BIN"]
SHARED = os.environ["PUNIE_SHARED_DIR"]
MODEL = os.path.join(SHARED, "fixtures", "models", "tiny-random-qwen2-4bit")
TOKENIZER = os.path.join(SHARED, "fixtures", "qwen2.5-tokenizer")
REPO = "mlx-community/Tiny-Random-Qwen2-4bit"


def run(args, data, env=None):
    e = dict(os.environ)
    e.pop("PUNIE_MODEL", None)
    e.update(env or {})
    return subprocess.run([BIN, "tokenize", *args], input=data, capture_output=True, timeout=60, env=e)


def encode(text, model=MODEL):
    r = run(["--model", model], text.encode())
    assert r.returncode == 0, r.stderr.decode()
    return [int(x) for x in r.stdout.split()]


def decode(ids, model=MODEL):
    r = run(["--model", model, "--decode"], " ".join(map(str, ids)).encode())
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


class TokenizeCli(unittest.TestCase):
    def test_encode_prints_ids_on_one_line(self):
        r = run(["--model", MODEL], b"Hello world")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"9707 1879\n")

    def test_special_tokens_in_text(self):
        self.assertEqual(encode("<|im_start|>hello<|im_end|>"), [151644, 14990, 151645])

    def test_decode(self):
        r = run(["--model", MODEL, "--decode"], b"151644 14990 151645\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"<|im_start|>hello<|im_end|>")

    def test_tokenizer_only_folder(self):
        self.assertEqual(encode(" Hello world", TOKENIZER), [21927, 1879])

    def test_vectors_round_trip(self):
        # every vector is checked in the C test; here a few with multibyte text, through the binary
        with open(os.path.join(SHARED, "fixtures", "tokenizer", "qwen2-bpe-vectors.json"), encoding="utf-8") as f:
            cases = [c for c in json.load(f)["cases"]
                     if c["name"] in ("CONTROL_TOKENS", "MULTIBYTE_EMOJIS", "HF_TRANSFORMERS_INTEGRATION_2")]
        self.assertEqual(len(cases), 3)
        for case in cases:
            with self.subTest(case["name"]):
                self.assertEqual(encode(case["text"]), case["ids"])
                self.assertEqual(decode(case["ids"]), case["text"])

    def test_decode_is_nfc_of_input(self):
        # decode(encode(s)) is the NFC form of s; checked against Python's unicodedata on random text
        # mixing bases, combining marks (out of order too), Hangul jamo and syllables.
        rng = random.Random(4)
        pool = ("aeiouAEOnNcCsSzZ \u00e9\u00c5\u212b\u1e0b\u0344\u0958\u0915"
                "\u0300\u0301\u0302\u0303\u0308\u030a\u0323\u0327\u0328\u0345\u05b0\u093c\u0e38"
                "\u1100\u1112\u1161\u1175\u11a8\u11c2\uac00\ud7a3\uc544\u3131"
                "\u03b1\u03c9\u0391\u1f00\u0435\u0418\u0306")
        text = "".join(rng.choice(pool) for _ in range(4000))
        want = unicodedata.normalize("NFC", text)
        self.assertEqual(decode(encode(text)), want)

    def test_models_dir_lookup(self):
        with tempfile.TemporaryDirectory() as d:
            repo_dir = os.path.join(d, "models--" + REPO.replace("/", "--"))
            snap = os.path.join(repo_dir, "snapshots", "0" * 40)
            os.makedirs(snap)
            os.makedirs(os.path.join(repo_dir, "refs"))
            with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
                f.write("0" * 40)
            for name in os.listdir(MODEL):
                os.symlink(os.path.join(MODEL, name), os.path.join(snap, name))
            r = run(["--model", "local:" + REPO, "--models-dir", d], b"Hello world")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, b"9707 1879\n")
            r = run(["--model", "local:" + REPO], b"Hello world", env={"PUNIE_MODELS_DIR": d})
            self.assertEqual(r.stdout, b"9707 1879\n")

    def test_missing_model(self):
        with tempfile.TemporaryDirectory() as d:
            r = run(["--model", "local", "--models-dir", d], b"hi")
            self.assertEqual(r.returncode, 1)
            self.assertIn(b"is not downloaded", r.stderr)
            self.assertIn(b"punie download-model", r.stderr)
            r = run(["--model", os.path.join(d, "nothing-here")], b"hi")
            self.assertEqual(r.returncode, 1)
            self.assertIn(b"not found", r.stderr)

    def test_bad_ids(self):
        for data in (b"12 abc", b"151665", b"-3", b"99999999999999999999", b"1.5"):
            with self.subTest(data=data):
                r = run(["--model", MODEL, "--decode"], data)
                self.assertEqual(r.returncode, 1)
                self.assertIn(b"is not a token id", r.stderr)

    def test_unknown_option(self):
        r = run(["--frobnicate"], b"")
        self.assertEqual(r.returncode, 2)

    def test_empty_input(self):
        r = run(["--model", MODEL], b"")
        self.assertEqual(r.returncode, 0)
        self.assertEqual(r.stdout, b"\n")


if __name__ == "__main__":
    unittest.main()
