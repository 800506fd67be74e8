"""
Privacy on the real stack: a canary that must leave no trace, no client address in the log,
and chunk sizes that must not follow the answer's token lengths.
"""

from __future__ import annotations

import base64
import math
import os
import re
import socket
import ssl
import statistics
import time
import uuid

import h2.config
import h2.connection
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from privllm.client import PrivllmClient, ServerError
from privllm.test.stack import Daemon, shared
from privllm.test.synthetic_upstream import Upstream, listen

from .docclient import DocClient, open_stream, sealed_chunks
from .test_e2e import ROUTER, user


def correlation(xs: list[float], ys: list[float]) -> float:
    """Pearson's r; 0 when either side does not vary (nothing can be inferred from a constant)."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return 0.0
    return statistics.correlation(xs, ys)


def needles(canary: bytes) -> list[bytes]:
    """The canary, and its base64 at each of the three alignments it can have inside a longer value."""
    found = [canary]
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + canary)
        found.append(encoded[math.ceil(4 * k / 3) + 1 : -4])
    return found


def files_under(*roots: str) -> list[str]:
    paths = []
    for root in roots:
        for directory, _, names in os.walk(root):
            paths += [os.path.join(directory, n) for n in names]
    return paths


class SideChannels(TestCase):
    timeout = 300

    def test_chunk_sizes_do_not_follow_token_lengths(self) -> None:
        router = shared(*ROUTER)
        doc = DocClient(router.port, router.ssl_context(), router.pin())
        raw, enc, secret = doc.chat_raw(user("Who were the US presidents in the 1990s? Answer in detail.", 200))
        chunks = open_stream(raw, enc, secret)
        sizes = [len(s) for s in sealed_chunks(raw)]
        deltas = [
            (len(c["text"].encode()), size) for c, size in zip(chunks, sizes, strict=True) if c["type"] == "delta"
        ]
        self.assertGreater(len(deltas), 5, "a real answer of many chunks")
        self.assertLessEqual(len({size for _, size in deltas}), 2, sizes)
        r = correlation([float(n) for n, _ in deltas], [float(s) for _, s in deltas])
        self.assertLess(abs(r), 0.1, (r, deltas))


class Canary(TestCase):
    timeout = 300

    async def test_canary_leaves_no_trace(self) -> None:
        canary = f"CANARY{uuid.uuid4().hex}"
        router = shared(*ROUTER)

        # A failing upstream (test equipment) behind its own router.
        socket_path = os.path.join(self.mktemp() + ".sock")
        socket_path = os.path.abspath(socket_path)
        broken = Daemon({"llama": {"spawn": False}, "backend": {"urls": [f"unix://{socket_path}"]}}, name="broken")
        self.addCleanup(broken.cleanup)
        chat = Upstream(listen(socket_path), rate=5, deltas=1, cut=True).start()  # one delta, then cut
        self.addCleanup(chat.stop)
        broken.start(wait_ready=False)
        await broken.ready(reactor)

        # 1. A real answer through the real stack.
        client = PrivllmClient(reactor, router.url, router.pin(), os.urandom(32), router.cert())
        self.addCleanup(client.close)
        result = await client.chat(user(f"Repeat after me: {canary}", 48))
        answer = result.text.strip()
        self.assertTrue(answer)

        # 2. A malformed plaintext (it decrypts, but is not JSON).
        doc = DocClient(router.port, router.ssl_context(), router.pin())
        chunks = doc.chat(f"not json {canary}".encode())
        self.assertEqual(chunks[-1]["code"], "bad_request")

        # 3. An upstream that fails mid-answer.
        broken_client = PrivllmClient(reactor, broken.url, broken.pin(), os.urandom(32), broken.cert())
        self.addCleanup(broken_client.close)
        with self.assertRaises(ServerError) as cm:
            await broken_client.chat(user(f"Tell me about {canary}"))
        self.assertEqual(cm.exception.code, "upstream_failed")
        self.assertEqual(chat.requests, 1)

        time.sleep(0.5)  # let both daemons finish their log lines
        searched = files_under(router.dir, broken.dir)
        self.assertIn(router.log_path, searched)
        self.assertIn(os.path.join(router.state_dir, "hpke-keyring.json"), searched)
        hits = []
        for path in searched:
            if path.endswith(".sock"):
                continue
            with open(path, "rb") as f:
                data = f.read()
            hits += [(path, n) for n in [*needles(canary.encode()), answer[:40].encode()] if n in data]
        self.assertEqual(hits, [])


def exchange(port: int, source: str, data: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """Send `data` from `source` (over TLS with `context`) and read until the daemon closes."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    reply = b""
    try:
        conn = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        conn.sendall(data)
        while piece := conn.recv(65536):
            reply += piece
    except (OSError, ssl.SSLError) as e:
        reply += repr(e).encode()
    finally:
        raw.close()
    return reply


def h2_request(path: str) -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", "x")], True)
    return client.data_to_send()


def old_tls() -> ssl.SSLContext:
    """A client that speaks only TLS 1.0 and 1.1, which the daemon refuses."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_ciphers("ALL:@SECLEVEL=0")
    # Deprecated versions: that is the point.
    context.minimum_version, context.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    return context


IPV4 = re.compile(rb"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


class NoAddresses(TestCase):
    """Point 7: hostile and ordinary clients from several addresses; none of them is logged."""

    timeout = 300

    def test_no_client_address_in_the_log(self) -> None:
        router = shared(*ROUTER)
        tls = router.ssl_context
        h2_context = router.ssl_context()
        h2_context.set_alpn_protocols(["h2"])
        port, sources = router.port, [f"127.0.0.{n}" for n in range(20, 31)]
        with open(router.log_path, "rb") as f:
            before = len(f.read())
        replies = [
            exchange(port, sources[0], b"GET /api/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tls()),
            exchange(port, sources[1], h2_request("/api/%ff%fe"), h2_context),
            exchange(port, sources[2], b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", tls()),
            exchange(port, sources[3], b"NOT AN HTTP REQUEST LINE\r\n\r\n", tls()),
            exchange(port, sources[4], b"BREW /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tls()),
            exchange(port, sources[5], b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),  # plain HTTP
            exchange(port, sources[6], b"GET /health HTTP/1.1\r\n\r\n", old_tls()),
            exchange(port, sources[7], b"\x16\x03\x01\x00\x10" + b"\x01" * 16),  # a broken ClientHello
        ]
        self.assertTrue(replies[0].startswith(b"HTTP/1.1 400 "), replies[0][:80])
        self.assertIn(b'{"error":"malformed"}', replies[0])
        self.assertTrue(replies[3].startswith(b"HTTP/1.1 400 "), replies[3][:80])
        self.assertTrue(replies[4].startswith(b"HTTP/1.1 405 "), replies[4][:80])
        self.assertIn(b"PROTOCOL_VERSION", replies[6])
        # Ordinary chats and a malformed plaintext, from three more addresses.
        for source in sources[8:10]:
            doc = DocClient(router.port, tls(), router.pin(), source=source)
            self.assertEqual(doc.chat(user("Say hi.", 8))[-1]["type"], "done")
        doc = DocClient(router.port, tls(), router.pin(), source=sources[10])
        self.assertEqual(doc.chat(b"not json")[-1]["code"], "bad_request")

        time.sleep(0.5)  # let the daemon finish its log lines
        with open(router.log_path, "rb") as f:
            log = f.read()
        new = log[before:]
        # The chats were logged (each line from inside a connection, where log_system held the
        # address); the bad paths are answered without a line (Klein logged them as failures).
        self.assertEqual(new.count(b"UnicodeDecodeError"), 0, new)
        self.assertGreaterEqual(new.count(b" ended: "), 3, new)
        self.assertEqual([s for s in sources if s.encode() in log], [])
        self.assertEqual(IPV4.findall(log), [])
