"""
Slow and greedy clients: a cap on open connections per address, and the client address
itself (from a trusted reverse proxy's header only when the peer is that proxy).
The per-request read deadline lives in privllm.web.request.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.server import Request


class _Connection(ProtocolWrapper):
    def makeConnection(self, transport: Any) -> None:
        # Sealed chunks are small and must leave at once: no Nagle delay behind the last one.
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        super().makeConnection(transport)


class ConnectionsPerAddress(WrappingFactory):
    """Refuse a new connection from an address that already holds `limit` open ones."""

    protocol = _Connection

    def __init__(self, wrapped: Any, limit: int) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.open: dict[str, int] = {}

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", "unix"))
        if self.open.get(host, 0) >= self.limit:
            return None
        protocol: Any = super().buildProtocol(addr)
        if protocol is not None:
            self.open[host] = self.open.get(host, 0) + 1
            protocol.privllm_host = host
        return protocol

    def unregisterProtocol(self, protocol: Any) -> None:
        super().unregisterProtocol(protocol)
        host = getattr(protocol, "privllm_host", None)
        if host is not None:
            left = self.open[host] - 1
            if left:
                self.open[host] = left
            else:
                del self.open[host]


class ClientAddress:
    def __init__(self, trusted_proxies: list[str], header: str) -> None:
        self._trusted = frozenset(trusted_proxies)
        self._header = header.encode() if header else b""

    def __call__(self, request: Request) -> str:
        peer = str(getattr(request.getClientAddress(), "host", "unix"))
        if self._header and peer in self._trusted:
            values = request.requestHeaders.getRawHeaders(self._header)
            if values:
                # The proxy appends the address it saw last; earlier entries are the client's word.
                forwarded = values[-1].split(b",")[-1].strip()
                if forwarded:
                    return forwarded.decode("ascii", "replace")[:64]
        return peer
