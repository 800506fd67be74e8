"""
The TypeScript SDK (clients/typescript) on the real stack: from Node (its CLI and its library,
trusting the dev router's self-signed certificate through NODE_EXTRA_CA_CERTS), and from headless
Chromium, where a page served from an allowed origin chats through a router with CORS.

Chromium runs Debian's build, driven by puppeteer-core (tests/browser), with --no-sandbox (the
tests run as root) and --ignore-certificate-errors: the dev router's certificate is self-signed,
and a page cannot be told to trust one certificate. scripts/test builds the SDK (dist/ and its
browser bundle) and scripts/bootstrap.sh installs Node.js, Chromium and the npm packages; a test
whose part is missing fails, naming it (a skip would hide a set-up that does not install it).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial.unittest import TestCase

from privllm.protocol.encoding import b64encode
from privllm.test.stack import Daemon, free_port, shared

from .test_abuse_e2e import guarded
from .test_e2e import ROUTER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = os.path.join(ROOT, "clients", "typescript", "dist")
CLI = os.path.join(DIST, "examples", "cli.js")
BUNDLE = os.path.join(DIST, "privllm.bundle.js")
STREAM = os.path.join(ROOT, "tests", "typescript", "stream.mjs")
BROWSER = os.path.join(ROOT, "tests", "browser")
EXIT_PROTOCOL, EXIT_NETWORK = 4, 3  # as privllm-chat's
POW_BITS = 8  # a router that asks every request for proof of work: a few hundred tries
RUN_TIMEOUT = 90.0  # seconds for one Node run or one browser page, start to finish


def need(*paths: str) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise AssertionError(f"{os.path.relpath(path, ROOT)} is missing: run scripts/bootstrap.sh and scripts/test")


def node(*args: str, ca_file: str | None) -> subprocess.CompletedProcess[str]:
    """Run Node with a fresh HOME (the SDK must not need the user's files); trust `ca_file` if given."""
    node_bin = shutil.which("node")
    if node_bin is None:
        raise AssertionError("node is missing: run scripts/bootstrap.sh")
    home = tempfile.mkdtemp(prefix="privllm-node-")
    env = {k: v for k, v in os.environ.items() if k != "NODE_EXTRA_CA_CERTS"}
    env.update(HOME=home, XDG_CONFIG_HOME=home)
    if ca_file is not None:
        env["NODE_EXTRA_CA_CERTS"] = ca_file
    try:
        return subprocess.run([node_bin, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, cwd=ROOT)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def other_pin() -> str:
    """A well-formed Ed25519 key that is not the router's."""
    return b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw())


class Node(TestCase):
    timeout = 300

    def setUp(self) -> None:
        need(CLI, STREAM)
        self.router = shared(*ROUTER)
        self.pin = b64encode(self.router.pin())

    def cli(self, pin: str, ca_file: str | None, protocol: int = 1) -> subprocess.CompletedProcess[str]:
        args = ["--url", self.router.url, "--pin", pin, "--max-tokens", "24", "--protocol", str(protocol)]
        return node(CLI, *args, "Say hello in one sentence.", ca_file=ca_file)

    def test_wrong_pin_refused(self) -> None:
        run = self.cli(other_pin(), self.router.ca_file)
        self.assertEqual(run.returncode, EXIT_PROTOCOL, run.stderr)
        self.assertIn("pin", run.stderr.lower())
        self.assertEqual(run.stdout.strip(), "")

    def test_untrusted_certificate_refused(self) -> None:
        run = self.cli(self.pin, None)
        self.assertEqual(run.returncode, EXIT_NETWORK, run.stderr)
        self.assertEqual(run.stdout.strip(), "")

    def test_cli_streams_answer(self) -> None:
        run = self.cli(self.pin, self.router.ca_file)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertNotEqual(run.stdout.strip(), "")

    def test_wrong_pin_refused_v2(self) -> None:
        """v2's key configurations are signed in headers: another pin refuses them, before any chat."""
        run = self.cli(other_pin(), self.router.ca_file, protocol=2)
        self.assertEqual(run.returncode, EXIT_PROTOCOL, run.stderr)
        self.assertIn("key configurations signed by a key other than the pinned identity", run.stderr)
        self.assertEqual(run.stdout.strip(), "")

    def test_cli_streams_answer_v2(self) -> None:
        run = self.cli(self.pin, self.router.ca_file, protocol=2)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertNotEqual(run.stdout.strip(), "")

    def test_library_streams(self) -> None:
        """Deltas arrive one by one while the answer is made, not all at once at its end."""
        self.assertStreams(node(STREAM, self.router.url, self.pin, ca_file=self.router.ca_file))

    def test_library_streams_v2(self) -> None:
        """The same over Oblivious HTTP: one sealed chunk per event, opened as it arrives."""
        self.assertStreams(node(STREAM, self.router.url, self.pin, "2", ca_file=self.router.ca_file))

    def assertStreams(self, run: subprocess.CompletedProcess[str]) -> None:
        self.assertEqual(run.returncode, 0, run.stderr)
        events: list[dict[str, Any]] = json.loads(run.stdout)
        *deltas, done = events
        self.assertEqual(done["type"], "done", events)
        self.assertGreater(done["usage"]["completion_tokens"], 0, events)
        self.assertEqual({e["type"] for e in deltas}, {"delta"}, events)
        self.assertGreaterEqual(len(deltas), 3, events)
        self.assertNotEqual("".join(e["text"] for e in deltas).strip(), "")
        # The router gathers deltas for 50 ms (privacy.coalesce_ms), so a stream spreads them over
        # at least that; a buffered answer would hand them over within a few milliseconds.
        self.assertGreater(done["ms"] - deltas[0]["ms"], 100, events)


class StaticSite:
    """The test page and the SDK's bundle, alone in a directory, served over http on two loopback
    ports: two origins, one that the router allows and one that it does not."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="privllm-site-")
        shutil.copy(os.path.join(BROWSER, "page.html"), self.dir)
        shutil.copy(BUNDLE, self.dir)
        self.ports = (free_port(), free_port())
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", self.dir],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in self.ports
        ]
        for port in self.ports:
            self.wait(port)

    @staticmethod
    def wait(port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the static server on port {port} did not start")

    def origin(self, allowed: bool) -> str:
        return f"http://127.0.0.1:{self.ports[0 if allowed else 1]}"

    def cleanup(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


_site: list[StaticSite] = []


def site() -> StaticSite:
    """One static site for the whole run, as the router that allows its origin is one (guarded)."""
    if not _site:
        _site.append(StaticSite())
        atexit.register(_site[0].cleanup)
    return _site[0]


class Browser(TestCase):
    timeout = 300

    def setUp(self) -> None:
        need(BUNDLE, os.path.join(BROWSER, "node_modules", "puppeteer-core"))
        self.chromium = shutil.which("chromium")
        if self.chromium is None:
            raise AssertionError("chromium is missing: run scripts/bootstrap.sh")
        self.site = site()
        self.router: Daemon = guarded("typescript-cors", {"server": {"cors_origins": [self.site.origin(True)]}})

    def open(self, allowed: bool, protocol: int = 1, router: Daemon | None = None) -> dict[str, Any]:
        """What the page showed when its chat ended (or when RUN_TIMEOUT ran out)."""
        router = router or self.router
        fields = {"url": router.url, "pin": b64encode(router.pin()), "protocol": str(protocol)}
        query = urllib.parse.urlencode(fields)
        profile = tempfile.mkdtemp(prefix="privllm-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        page = f"{self.site.origin(allowed)}/page.html?{query}"
        assert self.chromium is not None
        wait_ms = str(int((RUN_TIMEOUT - 15) * 1000))  # the page's wait ends before node is killed
        run = node(os.path.join(BROWSER, "drive.mjs"), self.chromium, page, profile, wait_ms, ca_file=None)
        self.assertEqual(run.returncode, 0, run.stderr)
        shown: dict[str, Any] = json.loads(run.stdout)
        return shown

    def test_other_origin_blocked(self) -> None:
        shown = self.open(allowed=False)
        self.assertEqual(shown["status"], "error", shown)
        self.assertTrue(shown["error"].startswith("NetworkError: "), shown)
        self.assertEqual((shown["deltas"], shown["answer"]), (0, ""), shown)

    def test_allowed_origin_streams_answer(self) -> None:
        shown = self.open(allowed=True)
        self.assertEqual((shown["status"], shown["error"]), ("done", ""), shown)
        self.assertGreater(shown["deltas"], 1, shown)
        self.assertNotEqual(shown["answer"].strip(), "", shown)

    def test_other_origin_blocked_v2(self) -> None:
        """Another origin cannot read the key configurations (a simple GET: no preflight, no
        Access-Control-Allow-Origin), so the client never sends a chat."""
        shown = self.open(allowed=False, protocol=2)
        self.assertEqual(shown["status"], "error", shown)
        self.assertTrue(shown["error"].startswith("NetworkError: "), shown)
        self.assertEqual((shown["deltas"], shown["answer"]), (0, ""), shown)

    def test_allowed_origin_streams_answer_v2(self) -> None:
        """The preflight of POST /api/ohttp (message/ohttp-req is not CORS-safelisted), the exposed
        Privllm-Keys-* headers, then the chunked OHTTP answer streamed."""
        shown = self.open(allowed=True, protocol=2)
        self.assertEqual((shown["status"], shown["error"]), ("done", ""), shown)
        self.assertGreater(shown["deltas"], 1, shown)
        self.assertNotEqual(shown["answer"].strip(), "", shown)

    def test_allowed_origin_solves_pow_v2(self) -> None:
        """A router asking for proof of work: the page's resend carries Privllm-Pow, a header the
        preflight must allow, and the answer streams."""
        sections = {
            "server": {"cors_origins": [self.site.origin(True)]},
            "pow": {"forced": True, "base_difficulty": POW_BITS, "max_difficulty": POW_BITS},
        }
        shown = self.open(allowed=True, protocol=2, router=guarded("typescript-cors-pow", sections))
        self.assertEqual((shown["status"], shown["error"]), ("done", ""), shown)
        self.assertGreater(shown["deltas"], 1, shown)
