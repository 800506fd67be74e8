"""
The real stack: twistd running privllm, which supervises llama-server with SmolLM2 on a
UNIX socket, reached over real TLS by privllm's client and by an independent one.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from privllm.body import BodyStream
from privllm.client import PrivllmClient, ServerError
from privllm.config.schema import Keys
from privllm.protocol.keyset import KEYSET_CLOCK_SKEW, StaleKeySet, choose_key, verify_keyset
from privllm.protocol.response import ResponseReader
from privllm.test.stack import shared

from .docclient import DocClient, b64

QUESTION = "Who were the US presidents in the 1990s?"
ROUTER = ("router", {"llama": {"metrics": True, "parallel": 4}})  # the one shared real stack


def user(text: str, max_tokens: int = 48) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0}


def llama_metric(sock: str, name: str) -> float:
    """Read one of llama-server's own counters over its private socket (it has --metrics in this test)."""
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--unix-socket", sock, "http://llama/metrics"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(rf"^llamacpp:{name} ([0-9.e+-]+)$", out, re.M)
    assert match, out
    return float(match.group(1))


class RealStack(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.daemon = shared(*ROUTER)

    def client(self) -> PrivllmClient:
        client = PrivllmClient(reactor, self.daemon.url, self.daemon.pin(), os.urandom(32), self.daemon.cert())
        self.addCleanup(client.close)  # it keeps connections alive, as an app would
        return client

    def doc_client(self) -> DocClient:
        return DocClient(self.daemon.port, self.daemon.ssl_context(), self.daemon.pin())

    # The happy paths

    async def test_streamed_answer(self) -> None:
        chunks: list[dict[str, Any]] = []
        result = await self.client().chat(user(QUESTION, 64), chunks.append)
        deltas = [c for c in chunks if c["type"] == "delta"]
        self.assertGreater(len(deltas), 3, "the answer arrives as many sealed deltas, not one block")
        self.assertEqual(result.text, "".join(c["text"] for c in deltas))
        self.assertTrue(result.text.strip())
        self.assertIn(result.finish_reason, ("stop", "length"))
        self.assertGreater(result.usage["prompt_tokens"], 5)
        self.assertGreaterEqual(result.usage["completion_tokens"], len(deltas) - 1)
        self.assertEqual(chunks[-1]["type"], "done")

    def test_independent_client(self) -> None:
        chunks = self.doc_client().chat(user("Name three colours."))
        self.assertEqual(chunks[-1]["type"], "done")
        self.assertTrue("".join(c.get("text", "") for c in chunks).strip())

    async def test_four_parallel_streams(self) -> None:
        results = await gatherResults(
            [ensureDeferred(self.client().chat(user(f"Say a word about the number {n}."))) for n in range(4)]
        )
        for r in results:
            self.assertIn(r.finish_reason, ("stop", "length"))
            self.assertTrue(r.text.strip())

    # Every error before decryption, with its code; the server keeps serving afterwards.

    def assertError(self, response: tuple[int, Any, bytes], status: int, code: str) -> None:
        got_status, headers, body = response
        self.assertEqual((got_status, json.loads(body)), (status, {"error": code}))
        self.assertEqual(headers["Cache-Control"], "no-store")

    def test_error_table(self) -> None:
        doc = self.doc_client()
        keyset = doc.keyset()
        current = next(k for k in keyset["keys"] if k["status"] == "current")
        good, _, _ = doc.seal(user("hello"), current)

        self.assertError(doc.post(b"{not json"), 400, "malformed")
        self.assertError(doc.post({**good, "v": 2}), 400, "malformed")
        self.assertError(doc.post({**good, "extra": 1}), 400, "malformed")
        self.assertError(doc.post({**good, "encapsulated_key": b64(b"x" * 31)}), 400, "malformed")
        self.assertError(doc.post({**good, "request_id": "short"}), 400, "malformed")

        live = {k["key_id"] for k in keyset["keys"]}
        self.assertError(doc.post({**good, "key_id": next(i for i in range(256) if i not in live)}), 422, "unknown_key")

        stale, _, _ = doc.seal(user("hello"), current, timestamp=int(time.time()) - 3600)
        response = doc.post(stale)
        self.assertError(response, 401, "stale")
        self.assertIn("Date", response[1])

        other, _, _ = doc.seal(user("hello"), current)
        self.assertError(doc.post({**good, "ciphertext": other["ciphertext"]}), 400, "decrypt_failed")
        self.assertError(doc.post({**good, "aad": b64(b"privllm/v1|0|0|tampered")}), 400, "decrypt_failed")

        status, _, _ = doc.post(good)  # the real request, after its forged copies: not burnt
        self.assertEqual(status, 200)
        self.assertError(doc.post(good), 409, "replay")

        self.assertError(doc.post(good, content_type="text/plain"), 415, "unsupported_media_type")
        self.assertEqual(doc.chat(user("still there?"))[-1]["type"], "done")

    def raw_tls(self) -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10)
        return self.daemon.ssl_context().wrap_socket(sock, server_hostname="127.0.0.1")

    def read_all(self, conn: ssl.SSLSocket) -> bytes:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        return data

    def test_too_large_refused_before_the_body(self) -> None:
        with self.raw_tls() as conn:
            conn.sendall(
                b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10000000\r\n\r\n"
            )
            reply = self.read_all(conn)  # no body byte was sent: the answer comes anyway
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "), reply)
        self.assertTrue(reply.endswith(b'{"error":"too_large"}'), reply)

    def test_too_large_chunked(self) -> None:
        sent = 0
        with self.raw_tls() as conn:
            conn.sendall(
                b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            piece = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
            try:
                for _ in range(64):  # at most 1 MiB, four times the limit
                    conn.sendall(piece)
                    sent += 16384
            except OSError:
                pass  # the router closed the connection once past the limit
            reply = self.read_all(conn)
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "), reply)
        self.assertLessEqual(sent, 1 << 20)

    async def test_disconnect_frees_the_slot(self) -> None:
        client = self.client()
        keys = await client.fetch_keys()
        sealed = client.seal(
            user("Repeat the word hello forever: hello hello hello hello hello hello hello", 2000),
            choose_key(keys, int(time.time())),
        )
        response = await client.post(sealed.body)
        self.assertEqual(response.code, 200)
        reader = ResponseReader(sealed)
        got: list[dict[str, Any]] = []
        body = BodyStream(lambda data: got.extend(reader.feed(data)))
        body.done.addErrback(lambda _: None)  # we cut it ourselves below
        response.deliverBody(body)
        self.addCleanup(lambda: (body.stop(), deferLater(reactor, 0.2))[1])
        for _ in range(300):
            if any(c["type"] == "delta" for c in got):
                break
            await deferLater(reactor, 0.05)
        self.assertTrue(got, "the answer started")
        self.assertGreaterEqual(llama_metric(self.daemon.llama_socket, "requests_processing"), 1)
        body.stop()  # the phone goes away mid-answer
        # Generating the rest would take llama-server well over 10 s here (2000 tokens at
        # about 110 tokens/s); the slot must be free within 3 s, so only the cut explains it.
        for _ in range(30):
            await deferLater(reactor, 0.1)
            if llama_metric(self.daemon.llama_socket, "requests_processing") == 0:
                break
        self.assertEqual(llama_metric(self.daemon.llama_socket, "requests_processing"), 0)
        _status, _, metrics = self.daemon.get("/metrics", tls=False)
        self.assertIn(b'privllm_chat_requests_total{outcome="client_gone"}', metrics)

    # Surface: health, headers, metrics, TLS, HTTP/2, the command line

    def test_health_and_headers(self) -> None:
        status, headers, body = self.daemon.get("/health")
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))
        self.assertEqual(headers["Server"], "privllm")
        status, _, body = self.daemon.get("/health/ready")
        self.assertEqual((status, json.loads(body)), (200, {"status": "ready"}))
        status, headers, _ = self.daemon.get("/api/pubkey")
        self.assertEqual(headers["Cache-Control"], "public, max-age=300")
        self.assertIn("max-age=", headers["Strict-Transport-Security"])
        status, _, body = self.daemon.get("/metrics")
        self.assertEqual((status, json.loads(body)), (404, {"error": "not_found"}))

    def test_metrics_listener(self) -> None:
        self.doc_client().chat(user("hi"))
        status, _, body = self.daemon.get("/metrics", tls=False)
        self.assertEqual(status, 200)
        text = body.decode()
        self.assertIn('privllm_chat_requests_total{outcome="ok"}', text)
        self.assertIn("privllm_time_to_first_token_seconds_bucket", text)
        self.assertRegex(text, r"privllm_node_healthy\{node=\"unix://[^\"]+\"\} 1.0")
        self.assertNotIn("127.0.0.1", text)
        status, headers, body = self.daemon.get("/llama/metrics", tls=False)  # llama-server's own, passed through
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version=0.0.4"))
        self.assertRegex(body.decode(), r"(?m)^llamacpp:prompt_tokens_total [0-9.e+]+$")

    def test_tls_versions(self) -> None:
        old = ssl.create_default_context(cafile=os.path.join(self.daemon.state_dir, "tls.crt"))
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10) as sock:
            with self.assertRaises(ssl.SSLError):
                old.wrap_socket(sock, server_hostname="127.0.0.1")
        with self.raw_tls() as conn:
            self.assertIn(conn.version(), ("TLSv1.2", "TLSv1.3"))
            self.assertIsNone(conn.compression())

    def test_http2_stream(self) -> None:
        doc = self.doc_client()
        body, enc, secret = doc.seal(user("Say hello."))
        out = subprocess.run(
            ["curl", "-sS", "--http2", "--max-time", "60", "--cacert", os.path.join(self.daemon.state_dir, "tls.crt"),
             "-H", "Content-Type: application/json", "--data-binary", json.dumps(body),
             "-w", "\n%{http_version}", self.daemon.url + "/api/chat"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        raw, _, version = out.rpartition(b"\n")
        self.assertEqual(version, b"2")
        from .docclient import open_stream

        self.assertEqual(open_stream(raw, enc, secret)[-1]["type"], "done")

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        device = os.path.join(self.daemon.dir, "device", "device.key")
        return subprocess.run(
            [sys.executable, "-m", "privllm.client", "--url", self.daemon.url, "--state-dir", self.daemon.state_dir,
             "--device-key", device, *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def test_privllm_chat(self) -> None:
        done = self.run_cli("--max-tokens", "32", QUESTION)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.strip())
        device = os.path.join(self.daemon.dir, "device", "device.key")
        self.assertEqual(os.stat(device).st_mode & 0o777, 0o600)
        events = self.run_cli("--json", "--max-tokens", "8", "Hi")
        lines = [json.loads(line) for line in events.stdout.splitlines()]
        self.assertEqual(lines[-1]["type"], "done")

    def test_privllm_chat_exit_codes(self) -> None:
        wrong_pin = self.run_cli(
            "--pin", b64(os.urandom(32)), "--ca", os.path.join(self.daemon.state_dir, "tls.crt"), "Hi"
        )
        self.assertEqual(wrong_pin.returncode, 4, wrong_pin.stderr)
        closed = subprocess.run(
            [sys.executable, "-m", "privllm.client", "--url", "https://127.0.0.1:9", "--state-dir", self.daemon.state_dir,
             "--device-key", os.path.join(self.daemon.dir, "device", "device.key"), "Hi"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(closed.returncode, 3, closed.stderr)
        too_much_work = self.run_cli("--max-pow-bits", "25", "Hi")
        self.assertEqual(too_much_work.returncode, 2, too_much_work.stderr)
        self.assertIn("--max-pow-bits", too_much_work.stderr)

    def test_key_set_carries_its_freshness(self) -> None:
        """The served set was signed within the last minute and expires one lifetime later; the
        client rule accepts it now and refuses it a skew after it expires."""
        conn = self.doc_client().connection()
        conn.request("GET", "/api/pubkey")
        raw = conn.getresponse().read()
        now = int(time.time())
        keyset = verify_keyset(raw, self.daemon.pin(), now)
        self.assertLessEqual(now - keyset.issued_at, 61)
        self.assertEqual(keyset.expires - keyset.issued_at, Keys().keyset_lifetime)
        self.assertRaises(StaleKeySet, verify_keyset, raw, self.daemon.pin(), keyset.expires + KEYSET_CLOCK_SKEW)

    async def test_bad_parameters_come_back_sealed(self) -> None:
        with self.assertRaises(ServerError) as cm:
            await self.client().chat({"messages": [{"role": "user", "content": "x"}], "temperature": 9})
        self.assertEqual(cm.exception.code, "bad_request")
        self.assertIsNone(cm.exception.status, "after decryption, errors come sealed inside the stream")

    def test_nothing_of_the_conversation_in_the_log(self) -> None:
        """Its own chat goes through first, so the check never rests on another test's chats."""
        self.assertEqual(self.doc_client().chat(user(QUESTION))[-1]["type"], "done")
        log = self.daemon.log()
        self.assertIn("privllm", log)
        for secret in (QUESTION, "Repeat the word", "Name three colours", "still there"):
            self.assertNotIn(secret, log)


class NoBackend(TestCase):
    """A router whose inference server is down: 503 before decryption, and rate limits per address."""

    timeout = 120

    def setUp(self) -> None:
        self.daemon = shared(
            "nobackend",
            {
                "llama": {"spawn": False},
                "backend": {"urls": ["unix:///nonexistent/privllm/llama.sock"]},
                "rate_limit": {"per_address_rate": 0.01, "per_address_burst": 3},
            },
            wait_ready=False,
        )

    def test_unavailable_then_rate_limited(self) -> None:
        status, _, body = self.daemon.get("/health/ready")
        self.assertEqual((status, json.loads(body)), (503, {"status": "unavailable"}))
        doc = DocClient(self.daemon.port, self.daemon.ssl_context(), self.daemon.pin())
        body, _, _ = doc.seal(user("hello"))
        for _ in range(3):
            status, headers, raw = doc.post(body)
            self.assertEqual((status, json.loads(raw)), (503, {"error": "unavailable"}))
        status, headers, raw = doc.post(body)
        self.assertEqual((status, json.loads(raw)), (429, {"error": "rate_limited"}))
        self.assertGreaterEqual(int(headers["Retry-After"]), 1)
        status, _, _ = self.daemon.get("/health")
        self.assertEqual(status, 200)
