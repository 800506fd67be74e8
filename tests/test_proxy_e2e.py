"""
A router behind Debian's haproxy in TCP mode with the PROXY protocol (send-proxy-v2): chats
stream through it, per-address limits count each real client and not haproxy, and nobody but
haproxy (connecting from 127.0.0.5) reaches the router directly.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import ssl
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from privllm.client import PrivllmClient
from privllm.test.stack import Daemon, shared

from .docclient import DocClient
from .haproxy import HAProxy
from .test_e2e import QUESTION, ROUTER, user

BALANCER = "127.0.0.5"  # haproxy's source address towards the router: the only one allowed there
BEHIND = {
    "server": {"proxy_protocol": True, "proxy_protocol_from": [BALANCER], "max_connections_per_address": 4},
    "rate_limit": {"per_address_rate": 0.02, "per_address_burst": 4},
    "pow": {"enabled": False},
}
_stack: dict[str, tuple[Daemon, HAProxy]] = {}


def behind_haproxy() -> tuple[Daemon, HAProxy]:
    """One router (on the shared stack's llama-server) and one haproxy in front, for the module."""
    if not _stack:
        llama = shared(*ROUTER).llama_socket
        sections = {**BEHIND, "llama": {"spawn": False}, "backend": {"urls": [f"unix://{llama}"]}}
        router = Daemon(sections, name="proxied")
        atexit.register(router.cleanup)
        router.start(wait=False)
        balancer = HAProxy([router.port], source=BALANCER).start()
        router.wait_ready(balancer.port)
        _stack["one"] = (router, balancer)
    return _stack["one"]


def closed_at_once(sock: socket.socket) -> bool:
    """The peer closed without a byte: end of stream or a reset, well before the read deadline."""
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


class BehindHAProxy(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.router, self.balancer = behind_haproxy()

    def doc_client(self, source: str) -> DocClient:
        return DocClient(self.balancer.port, self.router.ssl_context(), self.router.pin(), source=source)

    # Hostile first

    def test_direct_connection_is_closed(self) -> None:
        for source in ("127.0.0.1", "127.0.0.6"):
            with socket.create_connection(("127.0.0.1", self.router.port), 5, (source, 0)) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertTrue(closed_at_once(sock), source)
        with self.assertRaises((ssl.SSLError, OSError)):
            self.router.get("/health")  # TLS straight to the router, from 127.0.0.1

    def test_allowed_peer_without_header_is_closed(self) -> None:
        with socket.create_connection(("127.0.0.1", self.router.port), 5, (BALANCER, 0)) as sock:
            context = self.router.ssl_context()
            with self.assertRaises((ssl.SSLError, OSError)):
                context.wrap_socket(sock, server_hostname="127.0.0.1").do_handshake()

    def test_rate_limit_counts_the_real_client(self) -> None:
        flood = self.doc_client("127.0.0.2")
        codes = [json.loads(flood.post(b"{}")[2])["error"] for _ in range(6)]
        self.assertEqual(codes, ["malformed"] * 4 + ["rate_limited"] * 2)
        # Another client through the same haproxy is not limited, and still chats.
        other = self.doc_client("127.0.0.3")
        self.assertEqual(json.loads(other.post(b"{}")[2])["error"], "malformed")
        self.assertEqual(other.chat(user("Say hi.", 8))[-1]["type"], "done")

    def test_connection_cap_counts_the_real_client(self) -> None:
        held: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in held])
        context = self.router.ssl_context()
        for _ in range(4):  # max_connections_per_address, each counted before the next (past TLS)
            sock = socket.create_connection(("127.0.0.1", self.balancer.port), 5, ("127.0.0.4", 0))
            held.append(context.wrap_socket(sock, server_hostname="127.0.0.1"))
        extra = socket.create_connection(("127.0.0.1", self.balancer.port), 5, ("127.0.0.4", 0))
        held.append(extra)
        extra.sendall(b"\x16")
        self.assertTrue(closed_at_once(extra), "a fifth connection from 127.0.0.4 is refused")
        held[0].settimeout(0.5)
        with self.assertRaises(TimeoutError):
            held[0].recv(1)  # the first four stay open (until the read deadline)
        # All of them arrived from haproxy's one address: another client still gets in.
        status, _, _ = self.router.get("/health", port=self.balancer.port)
        self.assertEqual(status, 200)

    # The happy path

    async def test_chat_streams_through_haproxy(self) -> None:
        url = f"https://127.0.0.1:{self.balancer.port}"
        client = PrivllmClient(reactor, url, self.router.pin(), os.urandom(32), self.router.cert())
        self.addCleanup(client.close)
        chunks: list[dict[str, Any]] = []
        result = await client.chat(user(QUESTION, 48), chunks.append)
        deltas = [c for c in chunks if c["type"] == "delta"]
        self.assertGreater(len(deltas), 3, "the answer streams through haproxy as many sealed deltas")
        self.assertEqual(result.text, "".join(c["text"] for c in deltas))
        self.assertEqual(chunks[-1]["type"], "done")
