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

from typing import Any
from urllib.parse import urlparse

import treq
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime, IReactorUNIX
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from ..body import BytesProducer, read_bounded
from ..endpoints import AgentEndpoints, pooled_agent
from ..protocol.encoding import EncodingError, dumps, loads_bounded
from .errors import UpstreamError

__all__ = [
    "IDLE_CONNECTION_SECONDS",
    "JSON_HEADERS",
    "MAX_ANSWER_BYTES",
    "MAX_CONTEXT",
    "MAX_METRICS_BYTES",
    "STREAM_HEADERS",
    "UNIX_BASE",
    "CountError",
    "LlamaServer",
    "UNIXEndpointFactory",
    "socket_path",
]

UNIX_BASE = "http://llama-server"  # the authority is ignored: every connection goes to the socket
JSON_HEADERS = Headers({b"Content-Type": [b"application/json"]})
MAX_ANSWER_BYTES = 1 << 20  # /health and /props answers read at most
MAX_METRICS_BYTES = 1 << 20  # llama-server's /metrics: a few kilobytes of counters
MAX_CONTEXT = 1 << 24
# Close idle connections before a node does (its read deadline, 15 s by default): a chat
# sent on a connection the node is closing fails, and costs a retry.
IDLE_CONNECTION_SECONDS = 10
STREAM_HEADERS = Headers({b"Content-Type": [b"application/json"], b"Accept": [b"text/event-stream"]})


class CountError(UpstreamError):
    """The node's tokenizer did not answer with a count."""

    code = "token_count"


def _token_count(body: bytes) -> int:
    """`{"tokens": [...]}`: the body was bounded as it was read."""
    try:
        answer = loads_bounded(body, len(body))
    except EncodingError as e:
        raise CountError() from e
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    if not isinstance(tokens, list):
        raise CountError()
    return len(tokens)


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


class _ClosedOnStop(Service):
    def __init__(self, client: LlamaServer) -> None:
        self._client = client

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._client.close()


class LlamaServer:
    def __init__(
        self,
        reactor: IReactorTime,
        url: str,
        connect_timeout: float,
        tls: IPolicyForHTTPS | None = None,
        keep: int = 16,
    ) -> None:
        """`reactor`: also an IReactorTCP, or an IReactorUNIX for a unix:// url. `keep`: idle
        connections kept for reuse; as many as the backend serves streams at once. Idle
        connections close before a node closes them (its read deadline, 15 s by default): a
        chat sent on a connection the node is closing fails, and costs a retry."""
        endpoints: IAgentEndpointFactory
        if url.startswith("unix://"):
            endpoints = UNIXEndpointFactory(IReactorUNIX(reactor), socket_path(url), connect_timeout)
            self._base = UNIX_BASE
        else:
            if tls is None:
                raise ValueError("an https backend needs mutual TLS settings")
            endpoints = AgentEndpoints(reactor, tls, connect_timeout)
            self._base = url.rstrip("/")
        agent: Any
        agent, pool = pooled_agent(reactor, endpoints, keep, IDLE_CONNECTION_SECONDS)
        self._agent = agent
        self._reactor = reactor
        self.context: int | None = None  # tokens per slot, learned from the node once it is ready
        self._http = treq.client.HTTPClient(agent)
        self._pool = pool

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()

    def closed_on_stop(self) -> Service:
        """A service that closes this client's kept connections when it stops: add it to the
        parent before the services that use the client, so it stops after them."""
        return _ClosedOnStop(self)

    async def _get(self, path: str, timeout: float, max_bytes: int) -> bytes | None:
        """The body of a GET answered 200 within `timeout` (headers, then body) and `max_bytes`,
        or None."""
        try:
            response = await self._http.get(self._base + path, timeout=timeout)  # to the headers
            body = await read_bounded(response, max_bytes).addTimeout(timeout, self._reactor)
            return body if response.code == 200 else None
        except Exception:
            return None

    async def _get_json(self, path: str, timeout: float) -> Any:
        """The JSON answer of a GET, or None when it fails, is not 200, or is not bounded JSON."""
        body = await self._get(path, timeout, MAX_ANSWER_BYTES)
        try:
            return None if body is None else loads_bounded(body, MAX_ANSWER_BYTES)
        except Exception:
            return None

    async def metrics_text(self, timeout: float) -> bytes | None:
        """llama-server's own /metrics (with --metrics): its Prometheus text, or None."""
        return await self._get("/metrics", timeout, MAX_METRICS_BYTES)

    async def ready(self, timeout: float) -> bool:
        """True when /health answers 200 with status ok: llama-server does once its model is loaded.
        The first time, also learn the context each slot holds (a node's model is fixed)."""
        health = await self._get_json("/health", timeout)
        ready = isinstance(health, dict) and health.get("status") == "ok"
        if ready and self.context is None:
            self.context = await self.slot_context(timeout)
        return ready

    async def slot_context(self, timeout: float) -> int | None:
        """The tokens one slot holds: /props' `default_generation_settings.n_ctx`."""
        props = await self._get_json("/props", timeout)
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return n_ctx if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and 0 < n_ctx <= MAX_CONTEXT else None

    def count_tokens(self, text: str) -> Deferred[int]:
        """How many tokens the node's tokenizer makes of `text` (POST /tokenize)."""
        d = self._agent.request(
            b"POST", (self._base + "/tokenize").encode(), JSON_HEADERS, BytesProducer(dumps({"content": text}))
        )
        return d.addCallback(read_bounded, MAX_ANSWER_BYTES + 16 * len(text)).addCallback(_token_count)

    def post_stream(self, path: str, body: dict[str, Any] | bytes) -> Deferred[Any]:
        data = body if isinstance(body, bytes) else dumps(body)
        return self._agent.request(b"POST", (self._base + path).encode(), STREAM_HEADERS, BytesProducer(data))
