"""
Behind a TCP load balancer that speaks the PROXY protocol (haproxy's `send-proxy-v2`): only
the load balancers may connect, and each connection starts with their header naming the client.

The order, outermost first: the allow-list on the raw TCP peer (any other peer is closed by
the port at accept, before a byte is read or a handshake is started), Twisted's PROXY parser
(v1 and v2; a connection without a valid header is closed), then the per-address connection
cap on the header's source (privllm.web.limits), then TLS. The request-read deadline starts at
accept, so a header trickled in slowly is bounded like a slow request.

A LOCAL header (haproxy's own health checks) or a v1 UNKNOWN one names no client: Twisted
then reports the load balancer's own address, and the connection counts under it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.haproxy import proxyEndpoint
from zope.interface import implementer

from ..protocol.addresses import IPNetwork, parse_network
from .limits import peer_address

__all__ = ["AllowedPeersEndpoint", "PeersAllowed", "proxied"]


class PeersAllowed(Factory):
    """Builds a connection only for a peer inside `allowed`; for any other the port closes the
    socket at once (Twisted does so when buildProtocol answers None)."""

    def __init__(self, wrapped: Any, allowed: Iterable[IPNetwork]) -> None:
        self.wrapped = wrapped
        self.allowed = tuple(allowed)

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        address = peer_address(addr)
        if address is None or not any(address.version == n.version and address in n for n in self.allowed):
            return None
        return self.wrapped.buildProtocol(addr)


@implementer(IStreamServerEndpoint)
class AllowedPeersEndpoint:
    """An endpoint whose connections come only from `allowed` (addresses or CIDRs)."""

    def __init__(self, endpoint: Any, allowed: Iterable[str]) -> None:
        self._endpoint = endpoint
        self._allowed = tuple(parse_network(n) for n in allowed)

    def listen(self, factory: Any) -> Any:
        return self._endpoint.listen(PeersAllowed(factory, self._allowed))


def proxied(endpoint: Any, allowed: Iterable[str]) -> Any:
    """`endpoint`, accepting only `allowed` peers, each of which must start with a PROXY header."""
    inner: Any = AllowedPeersEndpoint(endpoint, allowed)  # provides IStreamServerEndpoint (zope, unseen by mypy)
    return proxyEndpoint(inner)
