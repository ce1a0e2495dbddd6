"""End-to-end tests of punie download-model / models / remove-model / verify against the local fake hub.

Every test runs the real punie binary against tools/fake_hub.py on 127.0.0.1, serving the tiny fixture model.
"""
import hashlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIN = os.environ["PUNIE_BIN"]
SHARED = os.environ["PUNIE_SHARED_DIR"]
SOURCE = os.environ["PUNIE_SOURCE_DIR"]
FIXTURE = os.path.join(SHARED, "fixtures", "models", "tiny-random-qwen2-4bit")
FAKE_HUB = os.path.join(SOURCE, "tools", "fake_hub.py")
REPO = "mlx-community/tiny-random-qwen2-4bit"
GATED = "acme/gated-tiny"
FOLDER = "models--mlx-community--tiny-random-qwen2-4bit"
WEIGHTS = "model.safetensors"

TMP = None
REPO_DIR = None
PKI = None


def setUpModule():
    global TMP, REPO_DIR
    TMP = tempfile.mkdtemp(prefix="punie-hub-test-")
    # The served repo: the fixture's files (as links, no copying) plus files a model does not need.
    REPO_DIR = os.path.join(TMP, "repo")
    os.makedirs(REPO_DIR)
    for name in os.listdir(FIXTURE):
        os.symlink(os.path.join(FIXTURE, name), os.path.join(REPO_DIR, name))
    with open(os.path.join(REPO_DIR, "README.md"), "w") as f:
        f.write("# tiny model\n")
    with open(os.path.join(REPO_DIR, ".gitattributes"), "w") as f:
        f.write("*.safetensors filter=lfs\n")
    with open(os.path.join(REPO_DIR, "logo.png"), "wb") as f:
        f.write(b"\x89PNG fake")
    os.makedirs(os.path.join(REPO_DIR, "extra"))
    with open(os.path.join(REPO_DIR, "extra", "notes.json"), "w") as f:
        f.write('{"nested": true}\n')


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def pki():
    """A throwaway CA with a certificate for 127.0.0.1 / localhost, plus an unrelated CA; made once per run."""
    global PKI
    if PKI:
        return PKI
    d = tempfile.mkdtemp(dir=TMP, prefix="pki-")
    path = lambda name: os.path.join(d, name)
    p = types.SimpleNamespace(ca=path("ca.pem"), other_ca=path("other-ca.pem"), cert=path("server.pem"),
                              key=path("server.key"), ca_dir=path("ca-dir"), other_ca_dir=path("other-ca-dir"),
                              empty=path("empty.pem"))
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *newkey, "-keyout", path(ca + ".key"), "-out", path(ca + ".pem"), "-days", "2",
                "-subj", "/CN=punie test " + ca, "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    with open(path("server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-new", *newkey, "-keyout", p.key, "-out", path("server.csr"), "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", path("server.csr"), "-CA", p.ca, "-CAkey", path("ca.key"), "-set_serial", "2",
            "-days", "2", "-extfile", path("server.ext"), "-out", p.cert)
    # OpenSSL looks CAs up in a directory by subject-hash names.
    for ca, folder in ((p.ca, p.ca_dir), (p.other_ca, p.other_ca_dir)):
        os.makedirs(folder)
        shutil.copy(ca, folder)
        openssl("rehash", folder)
    open(p.empty, "w").close()
    PKI = p
    return p


class FakeHub:
    def __init__(self, *args, tls=None):
        self.dir = tempfile.mkdtemp(dir=TMP)
        port_file = os.path.join(self.dir, "port")
        if tls:
            args += ("--tls-cert", tls.cert, "--tls-key", tls.key)
        self.context = ssl.create_default_context(cafile=tls.ca) if tls else None
        self.proc = subprocess.Popen(
            [sys.executable, FAKE_HUB, "--quiet", "--port", "0", "--port-file", port_file,
             "--repo", "%s=%s" % (REPO, REPO_DIR), "--repo", "%s=%s" % (GATED, FIXTURE),
             "--gated", GATED, "--token", "hf_goodtoken", "--tag", "v1.0=" + REPO, *args])
        deadline = time.time() + 20
        while not os.path.exists(port_file):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("fake hub did not start")
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10, context=self.context) as r:
            return json.loads(r.read())

    def log(self):
        return self.get("/_log")

    def set_faults(self, *specs):
        req = urllib.request.Request(self.url + "/_faults", data="\n".join(specs).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10, context=self.context).read()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class HubTest(unittest.TestCase):
    hub_args = ()
    tls = False

    def setUp(self):
        self.hub = FakeHub(*self.hub_args, tls=pki() if self.tls else None)
        self.home = tempfile.mkdtemp(dir=TMP)
        self.models = os.path.join(self.home, "models")

    def tearDown(self):
        self.hub.stop()

    def env(self, **extra):
        # Nothing from the host's hub, proxy or CA settings leaks in.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HF_", "HUGGING", "PUNIE_MODELS", "XDG_", "SSL_CERT_"))
               and k not in ("CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE") and "proxy" not in k.lower()}
        env.update(HOME=self.home, HF_ENDPOINT=self.hub.url, PUNIE_HUB_BACKOFF_MS="20")
        env.update(extra)
        return env

    def punie(self, *args, env=None, timeout=60, **kw):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout,
                              env=env or self.env(), **kw)

    def download(self, *args, repo=REPO, env=None):
        return self.punie("download-model", repo, "--models-dir", self.models, *args, env=env)

    def repo_dir(self, folder=FOLDER):
        return os.path.join(self.models, folder)

    def snapshot(self, folder=FOLDER):
        d = self.repo_dir(folder)
        with open(os.path.join(d, "refs", "main")) as f:
            return os.path.join(d, "snapshots", f.read().strip())

    def state(self):
        r = self.punie("models", "--models-dir", self.models)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def assert_ok(self, r):
        self.assertEqual(r.returncode, 0, "stdout:\n%s\nstderr:\n%s" % (r.stdout, r.stderr))

    def assert_fails(self, r, *needles):
        self.assertEqual(r.returncode, 1, "expected a clean failure, got %d\n%s\n%s" % (r.returncode, r.stdout, r.stderr))
        for n in needles:
            self.assertIn(n, r.stderr)

    def assert_complete_and_identical(self, folder=FOLDER, source=FIXTURE):
        snap = self.snapshot(folder)
        for name in os.listdir(source):
            with open(os.path.join(source, name), "rb") as a, open(os.path.join(snap, name), "rb") as b:
                self.assertEqual(hashlib.sha256(a.read()).digest(), hashlib.sha256(b.read()).digest(), name)
        self.assertIn("complete", self.state())


class DownloadBasics(HubTest):
    def test_download_layout_and_messages(self):
        r = self.download()
        self.assert_ok(r)
        self.assertIn("Downloading %s..." % REPO, r.stdout)
        self.assertIn(self.repo_dir(), r.stdout)
        self.assertIn("Model downloaded successfully to %s" % self.snapshot(), r.stdout)
        self.assertIn("punie serve --model local:%s --models-dir %s" % (REPO, self.models), r.stdout)
        self.assert_complete_and_identical()
        snap = self.snapshot()
        # Hugging Face cache layout: relative links into blobs named by their hash.
        link = os.readlink(os.path.join(snap, WEIGHTS))
        self.assertFalse(os.path.isabs(link))
        with open(os.path.join(FIXTURE, WEIGHTS), "rb") as f:
            self.assertEqual(link, "../../blobs/" + hashlib.sha256(f.read()).hexdigest())
        self.assertTrue(os.path.isdir(os.path.join(self.models, ".locks", FOLDER)))
        self.assertEqual(os.readlink(os.path.join(snap, "extra", "notes.json")),
                         "../../../blobs/" + os.path.basename(os.readlink(os.path.join(snap, "extra", "notes.json"))))
        # What a model does not need is skipped.
        for skipped in ("README.md", ".gitattributes", "logo.png"):
            self.assertFalse(os.path.lexists(os.path.join(snap, skipped)), skipped)
        self.assertEqual([n for n in os.listdir(os.path.join(self.repo_dir(), "blobs")) if "incomplete" in n], [])

    def test_second_run_fetches_nothing(self):
        self.assert_ok(self.download())
        n = len(self.hub.log())
        r = self.download()
        self.assert_ok(r)
        self.assertIn("already downloaded", r.stdout)
        later = self.hub.log()[n:]
        self.assertFalse([e for e in later if "/resolve" in e["path"] or e["listener"] == "cdn"], later)

    def test_include_exclude(self):
        r = self.download("--include", "*.json", "--exclude", "vocab.json", "--exclude", "extra/")
        self.assert_ok(r)
        snap = self.snapshot()
        names = sorted(os.listdir(snap))
        self.assertIn("config.json", names)
        self.assertNotIn("vocab.json", names)
        self.assertNotIn(WEIGHTS, names)
        self.assertNotIn("extra", names)
        # A snapshot without weights is not a usable model.
        self.assertIn("partial", self.state())

    def test_revision_tag_and_commit(self):
        info = self.hub.get("/_info")["repos"][REPO]
        r = self.download("--revision", "v1.0")
        self.assert_ok(r)
        self.assertTrue(os.path.isfile(os.path.join(self.repo_dir(), "refs", "v1.0")))
        r = self.download("--revision", info["commit"])
        self.assert_ok(r)
        self.assertTrue(os.path.isdir(os.path.join(self.repo_dir(), "snapshots", info["commit"])))

    def test_pagination_is_followed(self):
        self.hub.stop()
        self.hub = FakeHub("--page-size", "2")
        self.assert_ok(self.download())
        trees = [e for e in self.hub.log() if "/tree/" in e["path"]]
        self.assertGreater(len(trees), 3)
        self.assert_complete_and_identical()

    def test_quiet_and_disabled_progress(self):
        r = self.download("--quiet")
        self.assert_ok(r)
        self.assertNotIn("Fetched", r.stderr)
        self.punie("remove-model", REPO, "--models-dir", self.models)
        r = self.download(env=self.env(HF_HUB_DISABLE_PROGRESS_BARS="1"))
        self.assert_ok(r)
        self.assertNotIn("Fetched", r.stderr)
        self.punie("remove-model", REPO, "--models-dir", self.models)
        r = self.download()
        self.assertIn("Fetched", r.stderr)

    def test_default_repo_default_dir_and_hint(self):
        default = "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"
        self.hub.stop()
        self.hub = FakeHub("--repo", "%s=%s" % (default, FIXTURE))
        r = self.punie("download-model", "--quiet")
        self.assert_ok(r)
        where = os.path.join(self.home, ".cache", "punie", "models")
        self.assertIn("Downloading %s..." % default, r.stdout)
        self.assertIn(os.path.join(where, "models--mlx-community--Qwen2.5-Coder-7B-Instruct-4bit"), r.stdout)
        self.assertRegex(r.stdout, r"punie serve --model local\n")
        r = self.punie("download-model", "--list")
        self.assertRegex(r.stdout, r"Qwen2.5-Coder-7B-Instruct-4bit .*yes\n")
        self.assertRegex(r.stdout, r"Qwen2.5-Coder-3B-Instruct-4bit .*no\n")
        # $PUNIE_MODELS_DIR is honoured, and the hint then names the folder.
        r = self.punie("download-model", "--quiet", env=self.env(PUNIE_MODELS_DIR=self.models))
        self.assert_ok(r)
        self.assertIn("punie serve --model local --models-dir %s" % self.models, r.stdout)

    def test_bad_options(self):
        for args in (("--jobs", "0"), ("--jobs",), ("--frobnicate",), (REPO, "extra")):
            r = self.punie("download-model", *args)
            self.assertEqual(r.returncode, 2, args)


class Auth(HubTest):
    def test_token_goes_to_hub_only(self):
        r = self.download(repo=GATED, env=self.env(HF_TOKEN="hf_goodtoken"))
        self.assert_ok(r)
        log = self.hub.log()
        cdn = [e for e in log if e["listener"] == "cdn"]
        self.assertTrue(cdn)
        self.assertFalse([e for e in cdn if e["authorization"]])
        hub = [e for e in log if e["listener"] == "hub" and not e["path"].startswith("/_")]
        self.assertTrue(all(e["token"] == "hf_goodtoken" for e in hub))
        self.assertNotIn("hf_goodtoken", r.stdout + r.stderr)
        self.assert_complete_and_identical("models--acme--gated-tiny")

    def test_token_file(self):
        hf_home = os.path.join(self.home, "hf")
        os.makedirs(hf_home)
        with open(os.path.join(hf_home, "token"), "w") as f:
            f.write("hf_goodtoken\n")
        self.assert_ok(self.download(repo=GATED, env=self.env(HF_HOME=hf_home)))

    def test_gated_without_token(self):
        r = self.download(repo=GATED)
        self.assert_fails(r, "gated", "HF_TOKEN")
        self.assertFalse(os.path.exists(os.path.join(self.models, "models--acme--gated-tiny")))

    def test_gated_not_authorized(self):
        r = self.download(repo=GATED, env=self.env(HF_TOKEN="hf_othertoken"))
        self.assert_fails(r, "accept the terms at %s/%s" % (self.hub.url, GATED))
        self.assertNotIn("hf_othertoken", r.stdout + r.stderr)


class Errors(HubTest):
    def test_invalid_repo_id(self):
        for bad in ("noslash", "a/b/c", "../etc", "a/..", "org/na--me", "x-/y"):
            r = self.download(repo=bad)
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn("invalid repository id", r.stderr)
        self.assertEqual([e for e in self.hub.log() if not e["path"].startswith("/_")], [])

    def test_repo_not_found(self):
        r = self.download(repo="nobody/nothing")
        self.assert_fails(r, "Error downloading model", "not found")
        self.assertFalse(os.path.exists(os.path.join(self.models, "models--nobody--nothing")))

    def test_revision_not_found(self):
        self.assert_fails(self.download("--revision", "no-such-branch"), "Revision 'no-such-branch' not found")

    def test_rate_limit_is_waited_out(self):
        self.hub.set_faults("status:429:*/revision/*:1:1", "ratelimit:*/resolve/*/config.json:1:0")
        r = self.download()
        self.assert_ok(r)
        self.assertIn("Rate limited", r.stderr)
        self.assert_complete_and_identical()

    def test_server_errors_are_retried(self):
        self.hub.set_faults("status:500:*/tree/*:2", "status:503:/cdn/*:2", "status:502:*/resolve-cache/*:1")
        self.assert_ok(self.download())
        self.assert_complete_and_identical()

    def test_persistent_server_errors_fail(self):
        self.hub.set_faults("status:500:*/revision/*:1000")
        self.assert_fails(self.download(), "Error downloading model", "500")

    def test_persistent_file_errors_fail_and_stay_partial(self):
        self.hub.set_faults("status:503:/cdn/*:1000")
        self.assert_fails(self.download(), "Error downloading model")
        self.assertNotIn("complete", self.state())
        self.assertFalse(os.path.exists(os.path.join(self.repo_dir(), "refs", "main")))

    def test_dropped_connection_resumes_with_range(self):
        self.hub.set_faults("drop:%s:3000000:3" % WEIGHTS, "drop:tokenizer.json:100000:1")
        self.assert_ok(self.download("--jobs", "1"))
        ranged = [e for e in self.hub.log() if e["listener"] == "cdn" and e["range"]]
        self.assertTrue(any(not e["range"].startswith("bytes=0-") for e in ranged), ranged)
        self.assert_complete_and_identical()

    def test_server_ignoring_range_restarts_cleanly(self):
        self.hub.set_faults("drop:%s:5000000:1" % WEIGHTS, "ignore-range:%s" % WEIGHTS)
        self.assert_ok(self.download("--jobs", "1"))
        self.assert_complete_and_identical()

    def test_wrong_content_is_discarded_loudly(self):
        self.hub.set_faults("corrupt:config.json", "corrupt:%s" % WEIGHTS)
        # One connection: the run stops at the first mismatch without leaving another file half-written with
        # corrupt bytes (its resume would fail the check once more before a clean start).
        r = self.download("--jobs", "1")
        self.assert_fails(r, "hash mismatch")
        self.assertFalse(os.path.exists(os.path.join(self.repo_dir(), "refs", "main")))
        self.assertNotIn("complete", self.state())
        blobs = os.listdir(os.path.join(self.repo_dir(), "blobs"))
        with open(os.path.join(FIXTURE, "config.json"), "rb") as f:
            data = f.read()
        cfg_oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        self.assertFalse([b for b in blobs if b.startswith(cfg_oid)], blobs)
        self.hub.set_faults()
        self.assert_ok(self.download())
        self.assert_complete_and_identical()

    def test_parallel_blocks_are_hashed_in_file_order(self):
        # Throttled, so a second connection joins and the second block is written before the first is done:
        # the first is hashed from memory as it arrives, the second read back once the gap is filled.
        self.hub.set_faults("slow:%s:30000000" % WEIGHTS)
        self.assert_ok(self.download("--jobs", "2"))
        gets = [e for e in self.hub.log() if e["listener"] == "cdn" and e["method"] == "GET" and e["range"]]
        self.assertTrue(any(e["range"].startswith("bytes=%d-" % (32 << 20)) for e in gets), gets)
        self.assert_complete_and_identical()

    def test_wrong_content_is_caught_with_parallel_blocks(self):
        self.hub.set_faults("slow:%s:30000000" % WEIGHTS, "corrupt:%s" % WEIGHTS)
        self.assert_fails(self.download("--jobs", "2"), "hash mismatch")
        self.assertFalse(os.path.exists(os.path.join(self.repo_dir(), "refs", "main")))
        self.assertNotIn("complete", self.state())

    def test_redirect_loop_is_bounded(self):
        self.hub.set_faults("redirect-loop:config.json")
        self.assert_fails(self.download(), "too many redirects")

    def test_unsafe_paths_are_rejected(self):
        for evil in ("../../evil.json", "/abs/evil.json", "a\\..\\evil.json", "C:/evil.json", "a//evil.json",
                     "dir/../../evil.json", "a/./evil.json", "bad\x01name.json"):
            self.hub.set_faults("evil-path:" + evil)
            r = self.download()
            self.assert_fails(r, "unsafe file name")
        for root, dirs, files in os.walk(self.home):
            self.assertNotIn("evil.json", files)
        self.assertNotIn("complete", self.state())

    def test_broken_json_does_not_crash(self):
        for where in ("*/tree/*", "*/revision/*"):
            self.hub.set_faults("bad-json:" + where)
            self.assert_fails(self.download(), "unexpected")

    def test_odd_headers_are_tolerated(self):
        self.hub.set_faults("odd-headers")
        self.assert_ok(self.download())
        self.assert_complete_and_identical()

    def test_disk_space_checked_up_front(self):
        self.hub.set_faults("huge:%s" % WEIGHTS)
        r = self.download()
        self.assert_fails(r, "not enough disk space")
        self.assertFalse([e for e in self.hub.log() if e["listener"] == "cdn"])

    def test_unwritable_models_dir(self):
        blocker = os.path.join(self.home, "file")
        with open(blocker, "w") as f:
            f.write("x")
        r = self.punie("download-model", REPO, "--models-dir", os.path.join(blocker, "models"))
        self.assert_fails(r, "models directory")

    def test_write_failure_is_reported(self):
        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
        r = self.punie("download-model", REPO, "--models-dir", self.models, preexec_fn=limit)
        self.assert_fails(r, "Error downloading model", "File too large")
        self.assertNotIn("complete", self.state())

    def test_offline(self):
        r = self.download(env=self.env(HF_HUB_OFFLINE="1"))
        self.assert_fails(r, "offline")
        self.assert_ok(self.download())
        n = len(self.hub.log())
        r = self.download(env=self.env(HF_HUB_OFFLINE="1"))
        self.assert_ok(r)
        self.assertIn("Model downloaded successfully", r.stdout)
        later = [e for e in self.hub.log()[n:] if not e["path"].startswith("/_")]
        self.assertEqual(later, [])


class Unreachable(HubTest):
    def test_unreachable_hub_uses_complete_copy(self):
        env = self.env(PUNIE_HUB_MAX_RETRIES="1")
        self.hub.stop()
        r = self.download(env=env)
        self.assert_fails(r, "Error downloading model", "cannot reach %s" % self.hub.url)
        self.hub = FakeHub()
        env = self.env(PUNIE_HUB_MAX_RETRIES="1")
        self.assert_ok(self.download(env=env))
        self.hub.stop()
        r = self.download(env=env)
        self.assert_ok(r)
        self.assertIn("could not be reached", r.stderr)


class Interruptions(HubTest):
    def incomplete_progress(self):
        blobs = os.path.join(self.repo_dir(), "blobs")
        total = 0
        if os.path.isdir(blobs):
            for n in os.listdir(blobs):
                if n.endswith(".parts"):
                    try:
                        with open(os.path.join(blobs, n)) as f:
                            lines = f.read().split("\n")[1:]
                    except FileNotFoundError:  # that file just finished
                        continue
                    total += sum(int(l.split()[2]) for l in lines if l.strip())
        return total

    def test_kill9_then_resume(self):
        self.hub.set_faults("slow:%s:4000000" % WEIGHTS)
        p = subprocess.Popen([BIN, "download-model", REPO, "--models-dir", self.models, "--jobs", "2"],
                             env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while self.incomplete_progress() < 3_000_000 and time.time() < deadline and p.poll() is None:
            time.sleep(0.1)
        p.send_signal(signal.SIGKILL)
        p.wait()
        before = self.incomplete_progress()
        self.assertGreater(before, 0)
        self.assertNotIn("complete", self.state())
        self.assertFalse(os.path.exists(os.path.join(self.repo_dir(), "refs", "main")))
        self.hub.set_faults()
        n = len(self.hub.log())
        r = self.download()
        self.assert_ok(r)
        resumed = [e for e in self.hub.log()[n:] if e["listener"] == "cdn" and e["method"] == "GET"]
        self.assertTrue(resumed)
        # Every request of the second run starts past what the first run had written for its chunk.
        self.assertTrue(all(e["range"] and not e["range"].startswith("bytes=0-") for e in resumed), resumed)
        self.assert_complete_and_identical()
        self.assert_ok(self.punie("verify", REPO, "--models-dir", self.models))

    def test_resumes_a_foreign_partial_file(self):
        # huggingface_hub (before 1.18) leaves blobs/<etag>.incomplete holding a prefix of the content.
        with open(os.path.join(FIXTURE, WEIGHTS), "rb") as f:
            data = f.read()
        blobs = os.path.join(self.repo_dir(), "blobs")
        os.makedirs(blobs)
        prefix = 40_000_000
        with open(os.path.join(blobs, hashlib.sha256(data).hexdigest() + ".incomplete"), "wb") as f:
            f.write(data[:prefix])
        self.assert_ok(self.download())
        gets = [e for e in self.hub.log() if e["listener"] == "cdn" and e["method"] == "GET"]
        self.assertEqual([e["range"] for e in gets], ["bytes=%d-%d" % (prefix, len(data) - 1)])
        self.assert_complete_and_identical()

    def test_expired_cdn_link_is_refreshed(self):
        self.hub.set_faults("status:403:GET /cdn/*:1")
        self.assert_ok(self.download())
        self.assert_complete_and_identical()

    def test_concurrent_downloads_of_the_same_model(self):
        self.hub.set_faults("slow:%s:30000000" % WEIGHTS)
        cmd = [BIN, "download-model", REPO, "--models-dir", self.models, "--quiet"]
        procs = [subprocess.Popen(cmd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
        for p, (out, err) in zip(procs, outs):
            self.assertEqual(p.returncode, 0, err)
        self.assert_complete_and_identical()
        self.assert_ok(self.punie("verify", REPO, "--models-dir", self.models))
        weights_gets = [e for e in self.hub.log() if e["listener"] == "cdn" and e["method"] == "GET"]
        # The lock makes the second process wait and reuse the blob instead of fetching it again.
        self.assertLessEqual(len(weights_gets), 4)


class Management(HubTest):
    def test_models_verify_remove(self):
        self.assertIn("(none)", self.state())
        self.assert_ok(self.download())
        out = self.state()
        self.assertIn(REPO, out)
        self.assertIn("main", out)
        self.assertIn("complete", out)
        r = self.punie("verify", REPO, "--models-dir", self.models)
        self.assert_ok(r)
        self.assertIn("verified OK", r.stdout)
        # Flip a byte in the weights: verify must notice.
        target = os.path.realpath(os.path.join(self.snapshot(), WEIGHTS))
        with open(target, "r+b") as f:
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 1]))
        r = self.punie("verify", REPO, "--models-dir", self.models)
        self.assertEqual(r.returncode, 1)
        self.assertIn("MISMATCH", r.stdout)
        r = self.punie("remove-model", REPO, "--models-dir", self.models)
        self.assert_ok(r)
        self.assertFalse(os.path.exists(self.repo_dir()))
        self.assertIn("(none)", self.state())

    def test_remove_errors(self):
        r = self.punie("remove-model", REPO, "--models-dir", self.models)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not in", r.stderr)
        r = self.punie("remove-model", "../../etc", "--models-dir", self.models)
        self.assertEqual(r.returncode, 2)
        self.assertIn("invalid repository id", r.stderr)
        r = self.punie("verify", REPO, "--models-dir", self.models)
        self.assertEqual(r.returncode, 1)

    def test_remove_revision_keeps_shared_blobs(self):
        self.assert_ok(self.download())
        snap = self.snapshot()
        repo = self.repo_dir()
        # A second snapshot (another commit) that shares only config.json.
        other = "f" * 40
        os.makedirs(os.path.join(repo, "snapshots", other))
        os.symlink(os.readlink(os.path.join(snap, "config.json")), os.path.join(repo, "snapshots", other, "config.json"))
        with open(os.path.join(repo, "refs", "other"), "w") as f:
            f.write(other)
        r = self.punie("remove-model", REPO, "--revision", "main", "--models-dir", self.models)
        self.assert_ok(r)
        self.assertFalse(os.path.exists(snap))
        self.assertTrue(os.path.isfile(os.path.join(repo, "snapshots", other, "config.json")))
        self.assertEqual(len(os.listdir(os.path.join(repo, "blobs"))), 1)
        self.assertIn("other", self.state())

    def test_list_catalog(self):
        self.assert_ok(self.download())
        r = self.punie("download-model", "--list", "--models-dir", self.models)
        self.assert_ok(r)
        lines = [l.rstrip() for l in r.stdout.splitlines()]
        self.assertEqual(lines[0], "Available models:")
        self.assertTrue(lines[2].startswith("Name                                            Size    Description"))
        self.assertEqual(lines[3], "─" * 70)
        self.assertTrue(lines[4].startswith("mlx-community/Qwen2.5-Coder-7B-Instruct-4bit   ~4GB    Default (best balance)"))
        self.assertTrue(lines[5].startswith("mlx-community/Qwen2.5-Coder-3B-Instruct-4bit   ~2GB    Faster, simpler tasks"))
        self.assertTrue(lines[6].startswith("mlx-community/Qwen2.5-Coder-14B-Instruct-4bit  ~8GB    Highest quality"))
        self.assertTrue(lines[4].endswith("no"))
        self.assertEqual(lines[-1], "Download with: punie download-model <model-name>")

    def test_help(self):
        for cmd in ("download-model", "models", "remove-model", "verify"):
            r = self.punie(cmd, "--help")
            self.assert_ok(r)
            self.assertIn("Usage: punie " + cmd, r.stdout)
            self.assertIn("--models-dir", r.stdout)


class Tls(HubTest):
    """The hub and its CDN over HTTPS with a certificate from a private CA."""
    tls = True

    def assert_failed_cleanly(self, r, *needles):
        self.assert_fails(r, "Error downloading model", *needles)
        self.assertFalse(os.path.exists(os.path.join(self.repo_dir(), "refs", "main")))
        self.assertNotIn("complete", self.state())

    def test_ca_file(self):
        for var in ("SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
            r = self.download(env=self.env(**{var: pki().ca}))
            self.assert_ok(r)
            self.assert_complete_and_identical()
            self.assert_ok(self.punie("verify", REPO, "--models-dir", self.models))
            self.assert_ok(self.punie("remove-model", REPO, "--models-dir", self.models))
        # The weights came from the second (CDN) listener, over TLS as well.
        self.assertTrue([e for e in self.hub.log() if e["listener"] == "cdn" and e["method"] == "GET"])

    def test_ca_dir(self):
        self.assert_ok(self.download(env=self.env(SSL_CERT_DIR=pki().ca_dir)))
        self.assert_complete_and_identical()
        self.assert_ok(self.punie("verify", REPO, "--models-dir", self.models))

    def test_unknown_ca_fails_cleanly(self):
        for extra in ({"SSL_CERT_FILE": pki().other_ca}, {"SSL_CERT_DIR": pki().other_ca_dir}):
            r = self.download(env=self.env(**extra))
            self.assert_failed_cleanly(r, "TLS certificate verification failed for %s" % self.hub.url,
                                       "SSL_CERT_FILE")
        # The system's CAs do not know ours either (the exact words depend on whether the system has a bundle).
        self.assert_failed_cleanly(self.download(), "TLS", "SSL_CERT_FILE")
        self.assertEqual([e for e in self.hub.log() if not e["path"].startswith("/_")], [])

    def test_unusable_ca_file(self):
        for bad in (pki().empty, os.path.join(self.home, "missing.pem")):
            r = self.download(env=self.env(SSL_CERT_FILE=bad))
            self.assert_failed_cleanly(r, "cannot load TLS CA certificates from SSL_CERT_FILE=%s" % bad)


class RecordingProxy:
    """A forward proxy on 127.0.0.1 that records each request: absolute-URI GET/HEAD are relayed, CONNECT is
    tunnelled. Only loopback targets are served, so nothing can leave the machine."""
    HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
           "transfer-encoding", "upgrade"}

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def note(self):
                with proxy.lock:
                    proxy.seen.append({"method": self.command, "target": self.path,
                                       "authorization": self.headers.get("Authorization")})

            def do_GET(self):
                self.note()
                u = urllib.parse.urlsplit(self.path)
                if u.scheme != "http" or u.hostname != "127.0.0.1":
                    return self.send_error(502)
                up = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
                try:
                    up.request(self.command, u.path + ("?" + u.query if u.query else ""),
                               headers={k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP})
                    resp = up.getresponse()
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in proxy.HOP:
                            self.send_header(k, v)
                    self.end_headers()
                    while True:
                        block = resp.read(1 << 16)
                        if not block:
                            break
                        self.wfile.write(block)
                except (OSError, http.client.HTTPException):
                    self.close_connection = True
                finally:
                    up.close()

            do_HEAD = do_GET

            def do_CONNECT(self):
                self.note()
                host, _, port = self.path.rpartition(":")
                if host != "127.0.0.1":
                    return self.send_error(502)
                up = socket.create_connection((host, int(port)))
                self.send_response_only(200, "Connection established")
                self.end_headers()
                self.close_connection = True

                def pump(src, dst):
                    try:
                        while True:
                            data = src.recv(1 << 16)
                            if not data:
                                break
                            dst.sendall(data)
                    except OSError:
                        pass
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass

                back = threading.Thread(target=pump, args=(up, self.connection))
                back.start()
                pump(self.connection, up)  # the client waits for our 200 before it speaks, so rfile holds nothing
                back.join()
                up.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def requests(self):
        with self.lock:
            return list(self.seen)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Proxy(HubTest):
    """What libcurl (hence punie) takes from the proxy variables, checked against a proxy that records."""

    def setUp(self):
        super().setUp()
        self.proxy = RecordingProxy()

    def tearDown(self):
        self.proxy.stop()
        super().tearDown()

    def origin(self, url):
        u = urllib.parse.urlsplit(url)
        return "%s://%s" % (u.scheme, u.netloc)

    def assert_proxied_download(self, **extra):
        r = self.download(env=self.env(**extra))
        self.assert_ok(r)
        self.assert_complete_and_identical()
        seen = self.proxy.requests()
        self.assertTrue(seen, "the proxy saw nothing with %s" % extra)
        # Every request the hub and its CDN got came through the proxy.
        proxied = {urllib.parse.urlsplit(e["target"])._replace(scheme="", netloc="").geturl() for e in seen}
        direct = [e for e in self.hub.log() if not e["path"].startswith("/_") and e["path"] not in proxied]
        self.assertEqual(direct, [])
        self.assertTrue([e for e in seen if self.origin(e["target"]) != self.hub.url], "no CDN request: %s" % seen)
        self.assert_ok(self.punie("remove-model", REPO, "--models-dir", self.models))
        with self.proxy.lock:
            self.proxy.seen.clear()
        return seen

    def assert_direct_download(self, **extra):
        self.assert_ok(self.download(env=self.env(**extra)))
        self.assert_complete_and_identical()
        self.assertEqual(self.proxy.requests(), [], "proxied with %s" % extra)
        self.assert_ok(self.punie("remove-model", REPO, "--models-dir", self.models))

    def test_http_proxy_variables(self):
        for var in ("http_proxy", "ALL_PROXY", "all_proxy"):
            self.assert_proxied_download(**{var: self.proxy.url})
        # libcurl ignores uppercase HTTP_PROXY: in a CGI environment it could come from a request header.
        self.assert_direct_download(HTTP_PROXY=self.proxy.url)
        # A proxy for https is not used for http.
        self.assert_direct_download(https_proxy=self.proxy.url, HTTPS_PROXY=self.proxy.url)

    def test_no_proxy(self):
        for var in ("NO_PROXY", "no_proxy"):
            for value in ("127.0.0.1", "localhost,127.0.0.1", "*"):
                self.assert_direct_download(http_proxy=self.proxy.url, ALL_PROXY=self.proxy.url, **{var: value})
        self.assert_proxied_download(http_proxy=self.proxy.url, NO_PROXY="example.invalid")

    def test_token_goes_only_to_the_hub_through_a_proxy(self):
        r = self.download(repo=GATED, env=self.env(http_proxy=self.proxy.url, HF_TOKEN="hf_goodtoken"))
        self.assert_ok(r)
        seen = self.proxy.requests()
        to_hub = [e for e in seen if self.origin(e["target"]) == self.hub.url]
        elsewhere = [e for e in seen if self.origin(e["target"]) != self.hub.url]
        self.assertTrue(to_hub and elsewhere, seen)
        self.assertTrue(all(e["authorization"] == "Bearer hf_goodtoken" for e in to_hub), to_hub)
        self.assertEqual([e for e in elsewhere if e["authorization"]], [])

    def test_dead_proxy_fails(self):
        # Bound but not listening: connecting is refused, and no one else can take the port meanwhile.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = "http://127.0.0.1:%d" % s.getsockname()[1]
            r = self.download(env=self.env(http_proxy=dead, PUNIE_HUB_MAX_RETRIES="1"))
        self.assert_fails(r, "Error downloading model", "cannot reach %s" % self.hub.url)
        self.assertEqual([e for e in self.hub.log() if not e["path"].startswith("/_")], [])


    def test_https_through_connect(self):
        # The CONNECT request carries no token (CURLHEADER_SEPARATE); inside the tunnel it is TLS end to end.
        self.hub.stop()
        self.hub = FakeHub(tls=pki())
        port = urllib.parse.urlsplit(self.hub.url).port
        ca = pki().ca
        for var in ("https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
            r = self.download(repo=GATED, env=self.env(SSL_CERT_FILE=ca, HF_TOKEN="hf_goodtoken",
                                                       **{var: self.proxy.url}))
            self.assert_ok(r)
            seen = self.proxy.requests()
            self.assertEqual({e["method"] for e in seen}, {"CONNECT"}, var)
            self.assertIn("127.0.0.1:%d" % port, [e["target"] for e in seen])
            self.assertEqual([e for e in seen if e["authorization"]], [])
            self.assert_ok(self.punie("remove-model", GATED, "--models-dir", self.models))
            with self.proxy.lock:
                self.proxy.seen.clear()
        self.assertTrue([e for e in self.hub.log() if e["token"] == "hf_goodtoken" and e["listener"] == "hub"])
        # A proxy for http is not used for https; NO_PROXY applies here too.
        for extra in ({"http_proxy": self.proxy.url}, {"https_proxy": self.proxy.url, "NO_PROXY": "127.0.0.1"}):
            self.assert_ok(self.download(env=self.env(SSL_CERT_FILE=ca, **extra)))
            self.assertEqual(self.proxy.requests(), [], extra)
            self.assert_ok(self.punie("remove-model", REPO, "--models-dir", self.models))

if __name__ == "__main__":
    unittest.main()
