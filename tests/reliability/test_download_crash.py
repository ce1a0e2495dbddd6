"""Crash consistency of download-model: the downloader is killed with SIGKILL at random points (while it
talks to the API, mid-body, near the end where blobs are renamed and the ref is written), then run again.
After every kill nothing partial may count as downloaded: if refs/main exists, the snapshot it names holds
every file, byte for byte equal to the repository, and punie's own lookup agrees; otherwise punie's
lookup calls the model missing or partial. A complete model also passes `punie verify`. The final uninterrupted run always ends with the exact model.

Bounded: PUNIE_CRASH_KILLS kills (default 24) within PUNIE_CRASH_SECONDS (default 60).
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

BIN = os.environ["PUNIE_BIN"]
SHARED = os.environ["PUNIE_SHARED_DIR"]
SOURCE = os.environ["PUNIE_SOURCE_DIR"]
MODEL = os.path.join(SHARED, "fixtures/models/tiny-random-qwen2-4bit")
REPO = "crash-test/tiny-random"
KILLS = int(os.environ.get("PUNIE_CRASH_KILLS", "24"))
BUDGET = float(os.environ.get("PUNIE_CRASH_SECONDS", "60"))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class DownloadCrash(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="punie-crash-")
        port_file = os.path.join(cls.tmp, "port")
        cls.hub = subprocess.Popen([sys.executable, os.path.join(SOURCE, "tools/fake_hub.py"), "--repo",
                                    "%s=%s" % (REPO, MODEL), "--port-file", port_file, "--quiet"],
                                   stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not os.path.exists(port_file):
            if time.time() > deadline or cls.hub.poll() is not None:
                raise RuntimeError("fake hub did not start")
            time.sleep(0.05)
        cls.endpoint = "http://127.0.0.1:%d" % int(open(port_file).read())
        cls.expected = {name: sha256(os.path.join(MODEL, name)) for name in os.listdir(MODEL)}
        cls.weights_blob = cls.expected["model.safetensors"]
        cls.env = dict(os.environ, HF_ENDPOINT=cls.endpoint, HF_HOME=os.path.join(cls.tmp, "hf-home"),
                       HF_HUB_DISABLE_PROGRESS_BARS="1")
        cls.env.pop("HF_TOKEN", None)
        cls.env.pop("HF_HUB_OFFLINE", None)

    @classmethod
    def tearDownClass(cls):
        cls.hub.kill()
        cls.hub.wait()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def set_faults(self, *specs):
        req = urllib.request.Request(self.endpoint + "/_faults", data="\n".join(specs).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def download(self, models_dir):
        return subprocess.Popen([BIN, "download-model", REPO, "--models-dir", models_dir, "--quiet"],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def repo_dir(self, models_dir):
        return os.path.join(models_dir, "models--" + REPO.replace("/", "--"))

    def lookup(self, models_dir):
        """punie's own view, through the model lookup every command uses (serve, generate, tokenize)."""
        return subprocess.run([BIN, "tokenize", "--model", "local:" + REPO, "--models-dir", models_dir],
                              input="hi", env=self.env, capture_output=True, text=True, timeout=120)

    def check_state(self, models_dir, what):
        """The invariant after a kill: complete and exact, or not counted as downloaded at all."""
        ref = os.path.join(self.repo_dir(models_dir), "refs", "main")
        if not os.path.exists(ref):
            if os.path.isdir(self.repo_dir(models_dir)):
                r = self.lookup(models_dir)
                self.assertNotEqual(r.returncode, 0, "%s: a model without refs/main was accepted" % what)
                self.assertRegex(r.stderr, "not downloaded|partially downloaded",
                                 "%s: lookup gave no download hint: %s" % (what, r.stderr))
            return False
        r = self.lookup(models_dir)
        self.assertEqual(r.returncode, 0, "%s: refs/main written but the lookup refused: %s" % (what, r.stderr))
        commit = open(ref).read().strip()
        snap = os.path.join(self.repo_dir(models_dir), "snapshots", commit)
        got = {}
        for name in self.expected:
            path = os.path.join(snap, name)
            self.assertTrue(os.path.isfile(path), "%s: refs/main written but %s is missing" % (what, name))
            got[name] = sha256(path)
        self.assertEqual(got, self.expected, "%s: refs/main written but a file differs" % what)
        r = subprocess.run([BIN, "verify", REPO, "--models-dir", models_dir], env=self.env, capture_output=True,
                           text=True, timeout=300)
        self.assertEqual(r.returncode, 0, "%s: punie verify failed: %s%s" % (what, r.stdout, r.stderr))
        return True

    def wait_or_watch(self, p, models_dir, phase, delay):
        """Waits delay seconds, or until the on-disk event the phase names happens (polled as fast as
        Python can, to land in the short window between the last byte and the ref). True if p exited."""
        repo = self.repo_dir(models_dir)
        blob = os.path.join(repo, "blobs", self.weights_blob)
        snaps = os.path.join(repo, "snapshots")
        deadline = time.time() + delay
        while time.time() < deadline:
            if p.poll() is not None:
                break
            if phase == "weights renamed" and os.path.exists(blob):
                break
            if phase == "first link" and os.path.isdir(snaps) and any(os.listdir(os.path.join(snaps, c))
                                                                     for c in os.listdir(snaps)):
                break
            if phase in ("early", "middle", "late"):
                time.sleep(min(0.005, max(0.0, deadline - time.time())))
        if p.poll() is None:
            return False
        p.wait()
        return True

    def left_to_fetch(self, models_dir):
        """Bytes of the weights not on disk yet (blobs being written count as far as they got)."""
        blobs = os.path.join(self.repo_dir(models_dir), "blobs")
        have = 0
        if os.path.isdir(blobs):
            have = max([os.path.getsize(os.path.join(blobs, b)) for b in os.listdir(blobs)] + [0])
        return max(0, os.path.getsize(os.path.join(MODEL, "model.safetensors")) - have)

    def classify(self, models_dir):
        repo = self.repo_dir(models_dir)
        if not os.path.isdir(repo):
            return "nothing yet"
        if os.path.exists(os.path.join(repo, "refs", "main")):
            return "complete"
        blobs = os.path.join(repo, "blobs")
        names = os.listdir(blobs) if os.path.isdir(blobs) else []
        snaps = os.path.join(repo, "snapshots")
        links = sum(len(os.listdir(os.path.join(snaps, c))) for c in os.listdir(snaps)) if os.path.isdir(snaps) else 0
        if self.weights_blob in names:
            return "weights verified, %d links, no ref" % links
        if any(b.endswith(".incomplete") for b in names):
            return "weights partly fetched"
        return "%d small blobs, no weights yet" % len(names)

    def test_kill_anywhere_then_resume(self):
        rng = random.Random(int(os.environ.get("PUNIE_CRASH_SEED", "6")))
        started = time.time()
        kills = rounds = completed_under_kill = 0
        phases = {}
        states = {}
        while kills < KILLS and time.time() - started < BUDGET:
            rounds += 1
            models_dir = os.path.join(self.tmp, "round%d" % rounds)
            # Throttle the weights so kills land mid-body; vary the rate so the phases shift.
            rate = rng.choice([4, 8, 16, 32]) << 20
            self.set_faults("slow:*.safetensors:%d" % rate)
            for attempt in range(12):
                if kills >= KILLS or time.time() - started > BUDGET:
                    break
                expect = self.left_to_fetch(models_dir) / rate + 0.3
                phase = rng.choice(["early", "middle", "late", "weights renamed", "first link"])
                if phase == "weights renamed" and os.path.exists(
                        os.path.join(self.repo_dir(models_dir), "blobs", self.weights_blob)):
                    phase = "first link"
                delay = {"early": rng.uniform(0, 0.15), "middle": rng.uniform(0.15, max(0.2, expect * 0.8)),
                         "late": rng.uniform(expect * 0.8, expect * 1.1)}.get(phase, 60)
                p = self.download(models_dir)
                if not self.wait_or_watch(p, models_dir, phase, delay):
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    p.stdout.close()
                    kills += 1
                    phases[phase] = phases.get(phase, 0) + 1
                    self.check_state(models_dir, "kill %d (%s, %.2f s, round %d)" % (kills, phase, delay, rounds))
                    seen = self.classify(models_dir)
                    states[seen] = states.get(seen, 0) + 1
                    continue
                out = p.stdout.read().decode(errors="replace")
                p.stdout.close()
                self.assertEqual(p.returncode, 0, "download failed after kills:\n" + out)
                completed_under_kill += 1
                break
            # The uninterrupted run that finishes the job, at full speed.
            self.set_faults()
            p = self.download(models_dir)
            out, _ = p.communicate(timeout=300)
            self.assertEqual(p.returncode, 0, "final download failed:\n" + out.decode(errors="replace"))
            self.assertTrue(self.check_state(models_dir, "after the final run of round %d" % rounds))
            shutil.rmtree(models_dir)
        print("\ncrash: %d kills survived over %d rounds; kill times %s; state found after the kills %s; %d runs "
              "finished before their kill time; every round ended complete and byte-exact"
              % (kills, rounds, json.dumps(phases), json.dumps(states, sort_keys=True), completed_under_kill))
        self.assertGreater(kills, 0)


if __name__ == "__main__":
    unittest.main()
