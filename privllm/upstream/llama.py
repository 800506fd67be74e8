"""
The HTTP client for one backend speaking llama-server's API: llama-server itself on a
UNIX socket, or an inference node over mutual TLS (which forwards to its own llama-server).

An Agent whose endpoints are UNIX endpoints (or TLS with the mTLS policy), with kept-alive
connections; treq for the health check. The chat request goes straight to the Agent (treq's
request path added a few tenths of a millisecond to time to first token), and the answer
is streamed into a protocol that hands each piece to the sans-IO translator. Stopping that
protocol's transport closes the connection, which is how llama-server learns the client
left and frees the slot.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

import treq
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorUNIX
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ..body import BytesProducer
from ..endpoints import AgentEndpoints
from ..protocol.encoding import dumps

UNIX_BASE = "http://llama-server"  # the authority is ignored: every connection goes to the socket
STREAM_HEADERS = Headers({b"Content-Type": [b"application/json"], b"Accept": [b"text/event-stream"]})


def socket_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme != "unix" or not parsed.path.startswith("/"):
        raise ValueError("backend url must be unix:///absolute/path")
    return parsed.path


@implementer(IAgentEndpointFactory)
class UNIXEndpointFactory:
    def __init__(self, reactor: IReactorUNIX, path: str, timeout: float) -> None:
        self._reactor, self._path, self._timeout = reactor, path, timeout

    def endpointForURI(self, uri: object) -> Any:
        return UNIXClientEndpoint(self._reactor, self._path, timeout=self._timeout)


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


class LlamaServer:
    def __init__(self, reactor: Any, url: str, connect_timeout: float, tls: Any = None, keep: int = 16) -> None:
        """`keep`: idle connections kept for reuse; as many as the backend serves streams at once."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = keep
        pool._factory = _QuietFactory  # no "Starting factory" line for every upstream connection
        agent: Any
        if url.startswith("unix://"):
            factory = UNIXEndpointFactory(reactor, socket_path(url), connect_timeout)
            agent = Agent.usingEndpointFactory(reactor, factory, pool=pool)
            self._base = UNIX_BASE
        else:
            if tls is None:
                raise ValueError("an https backend needs mutual TLS settings")
            agent = Agent.usingEndpointFactory(reactor, AgentEndpoints(reactor, tls, connect_timeout), pool=pool)
            self._base = url.rstrip("/")
        self._agent = agent
        self._http = treq.client.HTTPClient(agent)
        self._pool = pool

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()

    async def ready(self, timeout: float) -> bool:
        """True when /health answers 200 with status ok: llama-server does once its model is loaded."""
        try:
            response = await self._http.get(self._base + "/health", timeout=timeout)
            body = await treq.content(response)
        except Exception:
            return False
        if response.code != 200:
            return False
        try:
            return bool(json.loads(body).get("status") == "ok")
        except (ValueError, AttributeError):
            return False

    def post_stream(self, path: str, body: dict[str, Any] | bytes) -> Deferred[Any]:
        data = body if isinstance(body, bytes) else dumps(body)
        return self._agent.request(b"POST", (self._base + path).encode(), STREAM_HEADERS, BytesProducer(data))  # type: ignore[no-any-return]
