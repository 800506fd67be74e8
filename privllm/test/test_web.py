"""The HTTP layer over an in-memory transport: headers, JSON errors, and bounded bodies."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from ..web.app import RouterApp
from ..web.metrics import RouterMetrics
from ..web.request import PrivllmSite
from .fakes import FakeUpstream
from .helpers import NOW, memory_gate, pool_of, ring, stream_settings

LIMIT = 4096


class HTTP(TestCase):
    def setUp(self) -> None:
        clock = Clock()
        clock.advance(NOW)
        app = RouterApp(
            clock=clock,
            gate=memory_gate(ring(), LIMIT, replay_max_entries=100, replay_max_per_address=100),
            keyset=lambda: b'{"v":1}',
            pool=pool_of(FakeUpstream()),
            metrics=RouterMetrics(),
            hsts_max_age=100,
            settings=stream_settings(keepalive=15, idle_timeout=60),
        )
        self.site = PrivllmSite(app.resource(), LIMIT, reactor=clock)

    def exchange(self, *pieces: bytes) -> tuple[bytes, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        protocol.makeConnection(transport)
        for piece in pieces:
            if transport.disconnecting:
                break
            protocol.dataReceived(piece)
        return transport.value(), transport

    def body(self, reply: bytes) -> object:
        head, rest = reply.split(b"\r\n\r\n", 1)
        if b"transfer-encoding: chunked" not in head.lower():
            return json.loads(rest)
        data = b""
        while True:
            size, rest = rest.split(b"\r\n", 1)
            if not int(size, 16):
                return json.loads(data)
            data, rest = data + rest[: int(size, 16)], rest[int(size, 16) + 2 :]

    def test_health_headers(self) -> None:
        reply, _ = self.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = reply.split(b"\r\n\r\n")[0].lower()
        self.assertIn(b"\r\nserver: privllm\r\n", head)
        self.assertIn(b"strict-transport-security: max-age=100; includesubdomains", head)
        self.assertEqual(self.body(reply), {"status": "ok"})

    def test_json_404_and_405(self) -> None:
        reply, _ = self.exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 404 "))
        self.assertEqual(self.body(reply), {"error": "not_found"})
        reply, _ = self.exchange(b"GET /api/chat HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 405 "))
        self.assertEqual(self.body(reply), {"error": "method_not_allowed"})

    def test_v2_routes_404_when_no_configurations_are_served(self) -> None:
        for request in (
            b"GET /api/ohttp-keys HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /api/ohttp HTTP/1.1\r\nHost: x\r\nContent-Type: message/ohttp-req\r\nContent-Length: 2\r\n\r\n{}",
        ):
            reply, _ = self.exchange(request)
            self.assertTrue(reply.startswith(b"HTTP/1.1 404 "), reply[:40])
            self.assertEqual(self.body(reply), {"error": "not_found"})

    def test_non_utf8_url_is_malformed_and_not_logged(self) -> None:
        """Klein logged each as a critical failure (a log flood) and answered in plain text."""
        for head in (b"GET /api/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /health HTTP/1.1\r\nHost: \xff\r\n\r\n"):
            reply, _ = self.exchange(head)
            self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply[:40])
            self.assertEqual(self.body(reply), {"error": "malformed"})
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_malformed_chat(self) -> None:
        reply, _ = self.exchange(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "))
        self.assertEqual(self.body(reply), {"error": "malformed"})
        self.assertIn(b"cache-control: no-store", reply.lower())

    def test_declared_too_large_refused_before_body(self) -> None:
        reply, transport = self.exchange(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999\r\n\r\n"
        )
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "))
        self.assertEqual(self.body(reply), {"error": "too_large"})
        self.assertTrue(transport.disconnecting)

    def test_chunked_too_large_refused_when_the_count_passes(self) -> None:
        head = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        piece = b"400\r\n" + b"x" * 1024 + b"\r\n"
        reply, transport = self.exchange(head, *([piece] * 4))
        self.assertEqual(reply, b"")  # exactly at the limit: still reading
        reply, transport = self.exchange(head, *([piece] * 5))
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)

    def test_body_never_spooled_to_disk(self) -> None:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        request = protocol.wrapped._channel.requests[-1]
        self.assertEqual(type(request.content).__name__, "BytesIO")
