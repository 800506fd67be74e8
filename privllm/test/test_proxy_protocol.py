"""
The public listener behind a PROXY-protocol load balancer: only the load balancers connect,
each connection must open with a valid header, and every per-address limit counts the client
the header names. Hostile cases first.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from ..config import ConfigError, load_config
from ..protocol.addresses import AddressPolicy
from ..services.errors import StartError
from ..services.listeners import https_listener, server_tls
from ..services.node import InferenceNode
from ..web.limits import ClientAddress, ProxiedConnectionsPerAddress
from ..web.proxied import proxied
from ..web.request import PrivllmSite

LB = "10.0.0.5"
DEADLINE = 5.0
V2_PREFIX = b"\r\n\r\n\x00\r\nQUIT\n"
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v1(source: str, family: bytes = b"TCP4") -> bytes:
    return b"PROXY %s %s 10.0.0.1 51000 443\r\n" % (family, source.encode())


def v2(source: str) -> bytes:
    """A PROXY v2 header for a TCP connection from `source`, as haproxy's send-proxy-v2 writes it."""
    address = ipaddress.ip_address(source)
    if address.version == 4:
        body = address.packed + ipaddress.ip_address("10.0.0.1").packed + struct.pack("!HH", 51000, 443)
        return V2_PREFIX + b"\x21\x11" + struct.pack("!H", len(body)) + body
    body = address.packed + ipaddress.ip_address("fd00::1").packed + struct.pack("!HH", 51000, 443)
    return V2_PREFIX + b"\x21\x21" + struct.pack("!H", len(body)) + body


class TCPTransport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


V2_LOCAL = V2_PREFIX + b"\x20\x00\x00\x00"  # haproxy's health checks: no client named


class Seen(Resource):
    """Records the address key each request counts under (ClientAddress, as admission uses it)."""

    isLeaf = True

    def __init__(self, client_address: ClientAddress) -> None:
        super().__init__()
        self.client_address = client_address
        self.keys: list[str] = []

    def render_GET(self, request: Any) -> bytes:
        self.keys.append(self.client_address(request))
        return b"ok"


class Chain(TestCase):
    """Allow-list, PROXY parser and cap as the router stacks them, over plain HTTP so a request
    shows the client address the application sees."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        policy = AddressPolicy(64)
        self.seen = Seen(ClientAddress(policy, ""))
        site = PrivllmSite(self.seen, 4096, self.reactor, 60, DEADLINE)
        self.cap = ProxiedConnectionsPerAddress(site, 2, policy)
        proxied(TCP4ServerEndpoint(self.reactor, 8443), [LB, "fd00::/8"]).listen(self.cap)
        self.outer: Any = self.reactor.tcpServers[0][1]

    def connect(self, peer: Any = None) -> tuple[Any, StringTransport]:
        peer = peer or IPv4Address("TCP", LB, 40000)
        protocol = self.outer.buildProtocol(peer)
        self.assertIsNotNone(protocol)
        transport = TCPTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def close(self, protocol: Any) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_peer_not_allowed_is_never_built(self) -> None:
        for peer in (
            IPv4Address("TCP", "10.0.0.6", 1),
            IPv4Address("TCP", "127.0.0.1", 1),
            IPv6Address("TCP", "2001:db8::5", 1),
            UNIXAddress(b"/tmp/x"),
        ):
            # None: the port closes the socket at once, before reading a byte or any TLS.
            self.assertIsNone(self.outer.buildProtocol(peer), peer)
        self.assertEqual(self.cap.open, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_allowed_by_cidr_and_mapped_form(self) -> None:
        self.connect(IPv6Address("TCP", "fd00::9", 1))
        self.connect(IPv6Address("TCP", "::ffff:10.0.0.5", 1))

    def test_missing_header_closes(self) -> None:
        for first in (GET, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), b"PROX"):
            protocol, transport = self.connect()
            protocol.dataReceived(first)
            self.assertTrue(transport.disconnecting, first)
            self.assertEqual(transport.value(), b"")
        self.assertEqual(self.seen.keys, [])
        self.assertEqual(self.cap.open, {})

    def test_bad_header_closes(self) -> None:
        bad = [
            b"PROXY TCP5 1.2.3.4 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n" + GET,  # Twisted keeps the text: the cap refuses it
            b"PROXY TCP4 " + b"1" * 200,  # no end of line within v1's 107 bytes
            V2_PREFIX + b"\x22\x11\x00\x0c" + bytes(12),  # command 2 does not exist
            V2_PREFIX + b"\x21\x21\x00\x0c" + bytes(12) + GET,  # IPv6 family, IPv4-sized addresses
            V2_PREFIX + b"\x21\x31\x00\xd8" + b"/tmp/s".ljust(216, b"\0") + GET,  # a UNIX source is no client
        ]
        for header in bad:
            protocol, transport = self.connect()
            protocol.dataReceived(header)
            self.assertTrue(transport.disconnecting, header)
            self.assertEqual(transport.value(), b"", header)
        self.assertEqual(self.seen.keys, [])
        self.assertEqual(self.cap.open, {})

    def test_headers_name_the_client(self) -> None:
        cases = [
            (v1("198.51.100.7"), "198.51.100.7"),
            (v1("2001:db8:1:2::7", b"TCP6"), "2001:db8:1:2::/64"),
            (v2("198.51.100.8"), "198.51.100.8"),
            (v2("2001:db8:1:3::8"), "2001:db8:1:3::/64"),  # IPv6 counted per prefix, as without a proxy
            (v2("::ffff:198.51.100.9"), "198.51.100.9"),
        ]
        for header, key in cases:
            protocol, transport = self.connect()
            protocol.dataReceived(header + GET)
            self.assertIn(b"200 OK", transport.value())
            self.assertEqual(self.seen.keys[-1], key)
            self.assertEqual(self.cap.open, {key: 1})
            self.close(protocol)
            self.assertEqual(self.cap.open, {})

    def test_header_and_request_in_separate_reads(self) -> None:
        protocol, _ = self.connect()
        protocol.dataReceived(v2("198.51.100.7"))
        self.assertEqual(self.cap.open, {}, "counted at the first byte after the header")
        protocol.dataReceived(GET)
        self.assertEqual(self.seen.keys, ["198.51.100.7"])
        self.assertEqual(self.cap.open, {"198.51.100.7": 1})

    def test_local_counts_as_the_load_balancer(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(V2_LOCAL + GET)
        self.assertIn(b"200 OK", transport.value())
        self.assertEqual(self.seen.keys, [LB])
        self.assertEqual(self.cap.open, {LB: 1})

    def test_cap_counts_the_header_source_not_the_load_balancer(self) -> None:
        held = []
        for _ in range(2):
            protocol, transport = self.connect()
            protocol.dataReceived(v2("198.51.100.7") + GET)
            held.append(protocol)
        protocol, transport = self.connect()
        protocol.dataReceived(v2("198.51.100.7") + GET)
        self.assertTrue(transport.disconnecting, "a third connection from the same client")
        self.assertEqual(transport.value(), b"", "refused before any byte reaches HTTP (or TLS)")
        self.close(protocol)
        other, other_transport = self.connect()  # the same load balancer, another client
        other.dataReceived(v1("198.51.100.8") + GET)
        self.assertIn(b"200 OK", other_transport.value())
        self.assertEqual(self.cap.open, {"198.51.100.7": 2, "198.51.100.8": 1})
        self.close(held[0])
        again, again_transport = self.connect()
        again.dataReceived(v2("198.51.100.7") + GET)
        self.assertIn(b"200 OK", again_transport.value())
        self.assertEqual(self.cap.open, {"198.51.100.7": 2, "198.51.100.8": 1})


class Listener(TestCase):
    """The listener exactly as the router builds it (tap), TLS included."""

    def setUp(self) -> None:
        state = self.mktemp()
        environ = {
            "PRIVLLM_KEYS__STATE_DIR": state,
            "PRIVLLM_SERVER__PROXY_PROTOCOL": "true",
            "PRIVLLM_SERVER__PROXY_PROTOCOL_FROM": f'["{LB}"]',
            "PRIVLLM_SERVER__REQUEST_READ_TIMEOUT": str(DEADLINE),
        }
        config = load_config("dev", environ=environ)
        os.makedirs(state, mode=0o700)
        self.reactor = MemoryReactorClock()
        site = PrivllmSite(Resource(), 4096, self.reactor, 60, DEADLINE)
        service = https_listener(config, self.reactor, site, server_tls(config))
        assert isinstance(service, StreamServerEndpointService)
        service.startService()
        self.addCleanup(service.stopService)
        self.outer: Any = self.reactor.tcpServers[0][1]

    def connect(self) -> tuple[Any, StringTransport]:
        peer = IPv4Address("TCP", LB, 40000)
        protocol = self.outer.buildProtocol(peer)
        transport = TCPTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_other_peer_is_closed_before_tls(self) -> None:
        self.assertIsNone(self.outer.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_deadline_runs_from_accept_through_a_trickled_header(self) -> None:
        protocol, transport = self.connect()
        header = v2("198.51.100.7")
        protocol.dataReceived(header[:16])  # enough for Twisted to choose the v2 parser
        for i in range(16, len(header) - 1):
            self.reactor.advance(DEADLINE / len(header))
            protocol.dataReceived(header[i : i + 1])
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(DEADLINE)
        self.assertTrue(transport.disconnecting, "a slow header is bounded by the read deadline")
        self.assertEqual(transport.value(), b"")

    def test_silent_connection_is_bounded(self) -> None:
        _, transport = self.connect()
        self.reactor.advance(DEADLINE - 0.01)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.01)
        self.assertTrue(transport.disconnecting)

    def test_header_then_tls_reaches_the_handshake(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(v2("198.51.100.7") + b"\x16\x03\x01\x00\x05hello")
        self.assertTrue(transport.disconnecting, "a bad ClientHello after a good header: TLS closes")
        self.assertNotEqual(transport.value(), b"", "TLS answered with an alert: the header was taken")


class Settings(TestCase):
    def test_proxy_protocol_needs_its_load_balancers(self) -> None:
        environ = {"PRIVLLM_KEYS__STATE_DIR": "/x", "PRIVLLM_SERVER__PROXY_PROTOCOL": "true"}
        with self.assertRaises(ConfigError) as e:
            load_config("dev", environ=environ)
        self.assertEqual(e.exception.key, "server.proxy_protocol_from")

    def test_entries_must_be_addresses(self) -> None:
        for bad in ('["haproxy.local"]', '["10.0.0.1/8"]', '["fe80::1%eth0"]', '[""]', '"10.0.0.1"'):
            environ = {
                "PRIVLLM_KEYS__STATE_DIR": "/x",
                "PRIVLLM_SERVER__PROXY_PROTOCOL": "true",
                "PRIVLLM_SERVER__PROXY_PROTOCOL_FROM": bad,
            }
            with self.assertRaises(ConfigError, msg=bad) as e:
                load_config("dev", environ=environ)
            self.assertEqual(e.exception.key, "server.proxy_protocol_from")

    def test_a_node_refuses_it(self) -> None:
        environ = {
            "PRIVLLM_KEYS__STATE_DIR": self.mktemp(),
            "PRIVLLM_SERVER__CLIENT_CA": "/nonexistent/ca.crt",
            "PRIVLLM_SERVER__PROXY_PROTOCOL": "true",
            "PRIVLLM_SERVER__PROXY_PROTOCOL_FROM": f'["{LB}"]',
        }
        with self.assertRaises(StartError) as e:
            InferenceNode(load_config("dev", environ=environ), MemoryReactorClock())
        self.assertIn("server.proxy_protocol", str(e.exception))

    def test_off_by_default(self) -> None:
        config = load_config("dev", environ={"PRIVLLM_KEYS__STATE_DIR": "/x"})
        self.assertFalse(config.server.proxy_protocol)
        self.assertEqual(config.server.proxy_protocol_from, [])
