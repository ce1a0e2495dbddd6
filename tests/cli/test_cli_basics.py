"""The binary's top level: help, version, unknown commands."""
import os
import subprocess
import unittest

BIN = os.environ["PUNIE_BIN"]


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=30)


class CliBasics(unittest.TestCase):
    def test_help_lists_commands(self):
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        for cmd in ("download-model", "serve", "generate", "tokenize", "models", "remove-model", "verify"):
            self.assertIn(cmd, r.stdout)

    def test_version(self):
        r = run("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^punie \d+\.\d+\.\d+")

    def test_unknown_command(self):
        r = run("frobnicate")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unknown command 'frobnicate'", r.stderr)

    def test_no_arguments_is_usage_error(self):
        r = run()
        self.assertEqual(r.returncode, 2)
        self.assertIn("Usage", r.stderr)


if __name__ == "__main__":
    unittest.main()
