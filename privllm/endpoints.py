"""
Twisted's Agent as both the client (towards the router) and the router (towards its
inference nodes) use it: kept-alive connections in a quiet pool (`pooled_agent`), and
endpoints made once per address (`AgentEndpoints`).

Left to itself, the Agent builds a HostnameEndpoint (IDNA-encoding the name) and asks its
TLS policy for new options on every request, even one that goes out on a kept-alive
connection: about 0.2 ms of every chat's time to first token, measured on the client.
Here the TLS policy is asked when a connection is made, so renewed TLS files still apply
to the next one.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from .twisted_private import quiet_pool

__all__ = ["AgentEndpoints", "pooled_agent"]


def pooled_agent(
    reactor: IReactorTime, endpoints: IAgentEndpointFactory, keep: int, idle_seconds: int
) -> tuple[Agent, HTTPConnectionPool]:
    """An Agent over `endpoints` and its pool, which keeps up to `keep` idle connections per
    address for `idle_seconds` and logs no factory start and stop for each connection.
    Close the pool's connections (closeCachedConnections) when done."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = keep
    pool.cachedConnectionTimeout = idle_seconds
    quiet_pool(pool)
    return Agent.usingEndpointFactory(reactor, endpoints, pool=pool), pool


@implementer(IOpenSSLClientConnectionCreator)
class _AskEachConnection:
    def __init__(self, policy: IPolicyForHTTPS, host: bytes, port: int) -> None:
        self._policy, self._host, self._port = policy, host, port

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        creator = self._policy.creatorForNetloc(self._host, self._port)
        return creator.clientConnectionForTLS(tls_protocol)


@implementer(IAgentEndpointFactory)
class AgentEndpoints:
    def __init__(self, reactor: IReactorTime, policy: IPolicyForHTTPS, timeout: float = 30) -> None:
        """`reactor`: also an IReactorTCP (HostnameEndpoint's). `policy`: asked for TLS options
        when a connection is made."""
        self._reactor, self._policy, self._timeout = reactor, policy, timeout
        self._endpoints: dict[tuple[bytes, bytes, int], Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        endpoint: Any = self._endpoints.get(key)
        if endpoint is None:
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._timeout)
            if uri.scheme == b"https":
                creator: Any = _AskEachConnection(self._policy, uri.host, uri.port)
                endpoint = wrapClientTLS(creator, endpoint)
            self._endpoints[key] = endpoint
        return endpoint
