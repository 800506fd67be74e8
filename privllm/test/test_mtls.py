"""The router's mTLS client against a node-like TLS server on loopback (real sockets, real TLS)."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import URI, Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..client import PrivllmClient
from ..config.schema import Backend
from ..endpoints import AgentEndpoints, pooled_agent
from ..keys.pki import CA_CERT, create_ca, issue
from ..keys.tls import load_chain, spki_pin
from ..twisted_private import _QuietFactory
from ..upstream.llama import LlamaServer
from ..upstream.mtls import MutualTLSPolicy, _Pinned
from ..web.tls import server_tls_options
from .fakes import RecordingPolicy


class Health(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b'{"status":"ok"}'


class Pins(TestCase):
    async def _setup(self) -> None:
        d = os.path.abspath(self.mktemp())
        create_ca(os.path.join(d, "ca"))
        self.ca = os.path.join(d, "ca", CA_CERT)
        self.node = issue(os.path.join(d, "ca"), "node1", os.path.join(d, "certs"), ips=["127.0.0.1"])
        self.router = issue(os.path.join(d, "ca"), "router", os.path.join(d, "certs"))
        options = server_tls_options(*self.node, "1.2", client_ca=self.ca, alpn=[b"http/1.1"])
        site = Site(Health())
        self.port = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(site)
        self.addCleanup(self.port.stopListening)
        self.url = f"https://127.0.0.1:{self.port.getHost().port}"

    async def ready_with(self, pin: str | None) -> bool:
        """A pin as the configuration gives it: a wrong key refused proves the policy finds it."""
        pins = Backend(urls=[self.url], pins=[f"{self.url}={pin}"] if pin else []).pins_by_host()
        client = LlamaServer(reactor, self.url, 5, MutualTLSPolicy(self.ca, *self.router, pins))
        try:
            return await client.ready(5)
        finally:
            await client.close()

    async def test_pins(self) -> None:
        await self._setup()
        self.assertTrue(await self.ready_with(None), "CA and name suffice without a pin")
        right = spki_pin(load_chain(self.node[0])[0])
        self.assertTrue(await self.ready_with(right))
        self.assertFalse(await self.ready_with(spki_pin(load_chain(self.router[0])[0])), "another key is refused")

    def test_a_pin_is_found_as_the_agent_names_the_node(self) -> None:
        """The Agent asks with the URL's host as written and the port filled in."""
        d = os.path.abspath(self.mktemp())
        create_ca(os.path.join(d, "ca"))
        router = issue(os.path.join(d, "ca"), "router", os.path.join(d, "certs"))
        for url in ("https://Node.Example", "https://[::1]:8443"):
            pins = Backend(urls=[url], pins=[f"{url}=P"]).pins_by_host()
            policy = MutualTLSPolicy(os.path.join(d, "ca", CA_CERT), *router, pins)
            uri = URI.fromBytes(url.encode() + b"/completion")
            self.assertIsInstance(policy.creatorForNetloc(uri.host, uri.port), _Pinned)
            self.assertNotIsInstance(policy.creatorForNetloc(uri.host, uri.port + 1), _Pinned)


class Endpoints(TestCase):
    """One endpoint per address; TLS options are asked for per connection, not per request
    (the Pins test above makes real connections through these endpoints)."""

    def test_one_endpoint_per_address(self) -> None:
        policy = RecordingPolicy()
        endpoints = AgentEndpoints(reactor, policy, 5)
        first = endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.1:8443/completion"))
        self.assertIs(endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.1:8443/health")), first)
        self.assertIsNot(endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.2:8443/health")), first)
        self.assertEqual(policy.asked, [], "no TLS options before a connection is made")


class PooledAgent(TestCase):
    """The router's node clients and the app client get their Agent and pool from one helper."""

    def test_the_pool_keeps_what_it_is_told_quietly(self) -> None:
        agent, pool = pooled_agent(reactor, AgentEndpoints(reactor, RecordingPolicy()), keep=3, idle_seconds=7)
        self.assertEqual((pool.maxPersistentPerHost, pool.cachedConnectionTimeout), (3, 7))
        self.assertIs(pool._factory, _QuietFactory)  # type: ignore[attr-defined]
        self.assertIsInstance(agent, Agent)

    def test_both_sides_use_it(self) -> None:
        pools = [
            LlamaServer(reactor, "unix:///nonexistent.sock", 5, keep=5)._pool,
            LlamaServer(reactor, "https://127.0.0.1:1", 5, RecordingPolicy())._pool,
            PrivllmClient(reactor, "https://127.0.0.1:1", b"\x01" * 32, b"\x02" * 32)._pool,
        ]
        for pool in pools:
            self.assertIs(pool._factory, _QuietFactory)  # type: ignore[attr-defined]
        self.assertEqual([p.maxPersistentPerHost for p in pools], [5, 16, 2])
