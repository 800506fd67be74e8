"""The systemd units parse and keep their sandboxing (systemd-analyze's offline rating)."""

from __future__ import annotations

import os
import re
import subprocess

from twisted.trial.unittest import TestCase

from privllm.config.listen import parse_listen

UNITS = os.path.join(os.path.dirname(__file__), "..", "systemd")
# Ratings seen when the units were written; a change that loosens the sandbox fails here.
MAX_EXPOSURE = {"privllm.service": 2.0, "privllm-node.service": 2.0, "privllm-llama.service": 1.0}


class Units(TestCase):
    def test_exposure(self) -> None:
        for unit, ceiling in MAX_EXPOSURE.items():
            out = subprocess.run(
                ["systemd-analyze", "security", "--offline=yes", os.path.join(UNITS, unit)],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
            assert match, out
            self.assertLessEqual(float(match.group(1)), ceiling, unit)

    def test_llama_server_flags(self) -> None:
        with open(os.path.join(UNITS, "privllm-llama.service")) as f:
            exec_start = next(line for line in f if line.startswith("ExecStart="))
        for flag in ("--no-slots", "--no-webui", "--host /run/privllm/inference.sock"):
            self.assertIn(flag, exec_start)
        for flag in ("--slot-save-path", "--log-prompts-dir", "--metrics", "--log-file"):
            self.assertNotIn(flag, exec_start)

    def test_the_socket_unit_passes_what_its_listen_string_names(self) -> None:
        path = os.path.join(UNITS, "privllm.socket")
        done = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(path) as f:
            text = f.read()
        listen = parse_listen(re.search(r'listen = "(.*)"', text).group(1))  # type: ignore[union-attr]
        self.assertIn(f"FileDescriptorName={listen.name}", text.splitlines())
        self.assertIn("ListenStream=[::]:443", text.splitlines())
        self.assertEqual(listen.domain, "INET6")


class HostScripts(TestCase):
    """The nftables rule sets and shell scripts shipped for operators at least parse."""

    def test_nftables_rules_parse(self) -> None:
        scripts = os.path.join(UNITS, "..", "scripts")
        for name in ("nftables-router.nft", "nftables-node.nft"):
            done = subprocess.run(["nft", "-c", "-f", os.path.join(scripts, name)], capture_output=True, text=True)
            self.assertEqual(done.returncode, 0, done.stderr)

    def test_shell_scripts_parse(self) -> None:
        scripts = os.path.join(UNITS, "..", "scripts")
        for name in sorted(os.listdir(scripts)):
            if name.endswith(".sh") or name in ("dev", "test"):
                done = subprocess.run(["bash", "-n", os.path.join(scripts, name)], capture_output=True, text=True)
                self.assertEqual(done.returncode, 0, (name, done.stderr))
