"""
Slow and greedy clients: a cap on open connections per address (IPv6: per prefix), and the
client address itself (from a trusted reverse proxy's header only when the peer is that
proxy). The per-request read deadline lives in privllm.web.request.

Behind a trusted proxy the TCP connections are the proxy's, not the clients': the proxy is
exempt from the connection cap, and each forwarded client is held to the same number of
concurrent chats by privllm.protocol.admission (`load.max_streams_per_address`).

Behind a PROXY-protocol load balancer (privllm.web.proxied) the client's address is known
only once the header is read: `ProxiedConnectionsPerAddress` counts a connection, or refuses
it, at its first bytes after the header, before any reach TLS.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.server import Request

from ..config.schema import Server
from ..protocol.addresses import AddressPolicy, IPAddress, parse_address
from ..protocol.errors import MALFORMED, RequestRejected

__all__ = ["UNPARSED_PEER", "ClientAddress", "ConnectionsPerAddress", "ProxiedConnectionsPerAddress", "peer_address"]

UNPARSED_PEER = "unparsed-peer"  # one shared key for a peer that is not an IP address (none on TCP)


def _peer(addr: Any) -> str:
    # The kernel's word, not the client's: a link-local zone (fe80::1%eth0) is dropped, not refused.
    return str(getattr(addr, "host", "")).split("%", 1)[0]


def peer_address(addr: Any) -> IPAddress | None:
    """A transport's peer as an address, or None when it is none (a UNIX socket's name)."""
    return parse_address(_peer(addr))


class _Connection(ProtocolWrapper):
    def makeConnection(self, transport: Any) -> None:
        # Sealed chunks are small and must leave at once: no Nagle delay behind the last one.
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        super().makeConnection(transport)


class ConnectionsPerAddress(WrappingFactory):
    """Refuse a new connection from an address (prefix) that already holds `limit` open ones;
    trusted proxies and Oblivious HTTP relays are not counted."""

    protocol: type[ProtocolWrapper] = _Connection

    def __init__(self, wrapped: Any, limit: int, policy: AddressPolicy | None = None) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.policy = policy or AddressPolicy(Server.ipv6_prefix)
        self.open: dict[str, int] = {}

    def _key(self, addr: Any) -> str | None:
        """The counted key, or None for a trusted proxy."""
        address = peer_address(addr)
        if address is None:
            return UNPARSED_PEER
        return None if self.policy.exempt(address) else self.policy.key(address)

    def _full(self, key: str | None) -> bool:
        return key is not None and self.open.get(key, 0) >= self.limit

    def _count(self, protocol: Any, key: str | None) -> None:
        if key is not None:
            self.open[key] = self.open.get(key, 0) + 1
            protocol.privllm_key = key

    def buildProtocol(self, addr: Any) -> Any:
        key = self._key(addr)
        if self._full(key):
            return None
        protocol: Any = super().buildProtocol(addr)
        if protocol is not None:
            self._count(protocol, key)
        return protocol

    def unregisterProtocol(self, protocol: Any) -> None:
        super().unregisterProtocol(protocol)
        key = getattr(protocol, "privllm_key", None)
        if key is not None:
            left = self.open[key] - 1
            if left:
                self.open[key] = left
            else:
                del self.open[key]


class _AfterHeader(_Connection):
    """A connection counted at its first bytes after the PROXY header, under the header's source."""

    admitted = False

    def dataReceived(self, data: bytes) -> None:
        if not self.admitted:
            factory: Any = self.factory
            if not factory.admit(self):
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            self.admitted = True
        super().dataReceived(data)


class ProxiedConnectionsPerAddress(ConnectionsPerAddress):
    """The cap behind a PROXY parser: at accept the peer is the load balancer, so a connection
    is counted (or refused, unread) only when its client's address is known."""

    protocol = _AfterHeader

    def buildProtocol(self, addr: Any) -> Any:
        return WrappingFactory.buildProtocol(self, addr)

    def admit(self, protocol: Any) -> bool:
        """False for a full address, or a header whose source is no IP address (UNIX, or a bad v1 line)."""
        peer = protocol.getPeer()
        if peer_address(peer) is None:
            return False
        key = self._key(peer)
        if self._full(key):
            return False
        self._count(protocol, key)
        return True


class ClientAddress:
    """The address key a request counts under. From a trusted proxy, the last value of the
    header (the address the proxy saw) when present; it must parse as an address, else the
    request is refused (400 `malformed`): a proxy that sends something else is misconfigured,
    and counting all its clients as one would let one of them lock out the rest. An Oblivious
    HTTP relay's requests count under the relay: its header, if any, is never read
    (AddressPolicy.trusted is false for a relay)."""

    def __init__(self, policy: AddressPolicy, header: str) -> None:
        self._policy = policy
        self._header = header.encode() if header else b""

    def __call__(self, request: Request) -> str:
        peer = peer_address(request.getClientAddress())
        if peer is None:
            return UNPARSED_PEER
        if self._header and self._policy.trusted(peer):
            values = request.requestHeaders.getRawHeaders(self._header)
            if values:
                # The proxy appends the address it saw last; earlier entries are the client's word.
                forwarded = parse_address(values[-1].rsplit(b",", 1)[-1].strip().decode("ascii", "replace"))
                if forwarded is None:
                    raise RequestRejected(MALFORMED)
                return self._policy.key(forwarded)
        return self._policy.key(peer)

    def relay(self, request: Request) -> bool:
        """Whether the request's peer is an Oblivious HTTP relay (by its TCP address only; no
        header is read): its requests are held to the relay's own budgets."""
        peer = peer_address(request.getClientAddress())
        return peer is not None and self._policy.relay(peer)
