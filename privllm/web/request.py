"""
The HTTP request and site: bodies kept in memory and bounded as they arrive, no version banner,
and a read deadline per connection.

Twisted's Request spools a body over 100 kB, or of unknown length, to a temporary file.
A chat body must never touch the disk, so every body goes to memory and a body over the
limit is refused as soon as its size is known: from Content-Length before any of it is
read, or, for chunked bodies, the moment the count passes the limit.

Each connection gets a `ReadDeadline` (privllm.web.deadline): a slowloris that trickles
bytes keeps Twisted's idle timer alive forever, but not this deadline. It is started when
the connection is made (HTTP/1.1 and HTTP/2 alike: ALPN is decided later, on the same
connection) and told by each request when it was read whole and when it was answered.
An HTTP/2 stream also gets its own deadline from its HEADERS to its end, since other
streams may be answered meanwhile.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.python.components import proxyForInterface
from twisted.web import http, server
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import implementer

from ..config.schema import Server
from ..protocol.encoding import dumps
from ..protocol.errors import MALFORMED, TOO_LARGE, Rejection
from .deadline import ReadDeadline

__all__ = ["BODY_BUDGET_BODIES", "SERVER_NAME", "BodyBudget", "PrivllmRequest", "PrivllmSite", "error_body"]

SERVER_NAME = b"privllm"


def error_body(rejection: Rejection) -> bytes:
    return dumps({"error": rejection.code})


BODY_BUDGET_BODIES = 4  # request bodies' worth of bytes one connection may hold while they arrive


class BodyBudget:
    """Bytes of request bodies one connection holds while they arrive. HTTP/1.1 reads one
    request at a time; HTTP/2 multiplexes up to 100 streams, each with a body up to the limit,
    so without this one connection could hold 100 bodies in memory (locked, in prod)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


class PrivllmRequest(server.Request):
    _received = 0
    _budgeted = 0  # bytes of this body counted in the connection's budget
    _too_large = False
    _refused_early = False
    _answering = False
    _stream_deadline: ReadDeadline | None = None

    def __init__(
        self,
        channel: Any,
        *args: Any,
        connection: ReadDeadline | None = None,
        budget: BodyBudget | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(channel, *args, **kw)
        self._connection = connection
        self._budget = budget
        if connection is not None and not isinstance(channel, http.HTTPChannel):
            # An HTTP/2 stream: its body must arrive in time even while other streams are answered.
            site: Any = channel.site
            self._stream_deadline = ReadDeadline(site.reactor, site.request_read_timeout)
            self._stream_deadline.start(channel.abortConnection)

    def _answered(self) -> None:
        if self._answering and self._connection is not None:
            self._answering = False
            self._connection.answered()

    def finish(self) -> None:
        super().finish()
        self._answered()

    def _give_budget(self) -> None:
        if self._budget is not None and self._budgeted:
            self._budget.give(self._budgeted)
            self._budgeted = 0

    def connectionLost(self, reason: Any) -> None:
        self._give_budget()
        if self._stream_deadline is not None:
            self._stream_deadline.stop()
        super().connectionLost(reason)
        self._answered()

    @property
    def _limit(self) -> int:
        channel: Any = self.channel
        return int(channel.site.max_body)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        # twisted.web.server sets "Server: TwistedWeb/<version>"; we name no version.
        if (name.lower() if isinstance(name, bytes) else name.lower().encode()) == b"server":
            value = SERVER_NAME
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self._limit:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        if self._received > self._limit:
            self.content = io.BytesIO()
            self._refuse()
            return
        if self._budget is not None:
            if not self._budget.take(len(data)):
                self._give_budget()
                self.channel.abortConnection()  # type: ignore[attr-defined]
                return
            self._budgeted += len(data)
        content: Any = self.content
        content.write(data)

    def _refuse(self) -> None:
        self._too_large = True
        channel: Any = self.channel
        if isinstance(channel, http.HTTPChannel) and channel.transport is not None:
            # HTTP/1.x: answer now and close, so the rest of the body is never read.
            body = error_body(TOO_LARGE)
            transport: Any = channel.transport
            transport.write(
                b"HTTP/1.1 413 Content Too Large\r\nServer: privllm\r\nContent-Type: application/json\r\n"
                b"Cache-Control: no-store\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            channel.loseConnection()
            self._refused_early = True
        # HTTP/2: the stream is flow controlled; what still arrives is dropped unread and
        # the 413 goes out when the stream's request completes (see process).

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._give_budget()  # arrived whole: the route reads it and lets it go
        if self._stream_deadline is not None:
            self._stream_deadline.stop()
        if self._refused_early:
            return  # the connection is closing; the deadline still bounds how long that takes
        if self._connection is not None:
            self._answering = True
            self._connection.read()
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self._too_large:
            self._answer(TOO_LARGE)
        elif not _decodable(self):
            # Klein would log each one as a critical failure (a log flood) and answer in text.
            self._answer(MALFORMED)
        else:
            super().process()

    def _answer(self, rejection: Rejection) -> None:
        self.site = self.channel.site  # type: ignore[attr-defined]
        self.setResponseCode(rejection.status)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"cache-control", b"no-store")
        self.write(error_body(rejection))
        self.finish()


def _decodable(request: server.Request) -> bool:
    """The URL parts a router decodes (path and host name) are UTF-8."""
    try:
        unquote_to_bytes(request.path).decode("utf-8")
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@implementer(INonQueuedRequestFactory)
class _Requests:
    """Builds the requests of one connection, each told of the connection's deadline and
    body budget."""

    def __init__(self, make: Any, deadline: ReadDeadline, budget: BodyBudget) -> None:
        self._make = make
        self._deadline = deadline
        self._budget = budget

    def __call__(self, channel: Any, **kw: Any) -> Any:
        return self._make(channel, connection=self._deadline, budget=self._budget, **kw)


class _Deadlined(proxyForInterface(IProtocol, "wrapped")):  # type: ignore[misc]
    """Starts the connection's read deadline at accept (before TLS and ALPN), stops it at close."""

    def __init__(self, wrapped: Any, deadline: ReadDeadline) -> None:
        self.wrapped = wrapped
        self.deadline = deadline

    def makeConnection(self, transport: Any) -> None:
        self.deadline.start(transport.abortConnection)
        self.wrapped.makeConnection(transport)

    def connectionLost(self, reason: Any) -> None:
        self.deadline.stop()
        self.wrapped.connectionLost(reason)


class PrivllmSite(server.Site):
    """No access log (it would record addresses and paths), no tracebacks to clients."""

    requestFactory = PrivllmRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: object,
        max_body: int,
        reactor: IReactorTime | None = None,
        idle_timeout: float = Server.idle_timeout,
        request_read_timeout: float = Server.request_read_timeout,
    ) -> None:
        # Bodies are sealed JSON: never parse them as forms (Twisted would, with the email
        # package's header parser, for every POST).
        super().__init__(resource, reactor=reactor, timeout=idle_timeout, parsePOSTFormSubmission=False)
        self.max_body = max_body
        self.request_read_timeout = request_read_timeout

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        deadline = ReadDeadline(self.reactor, self.request_read_timeout)
        # Set through the channel so that an HTTP/2 connection, chosen later by ALPN, gets it too.
        budget = BodyBudget(BODY_BUDGET_BODIES * self.max_body)
        channel.requestFactory = _Requests(self.requestFactory, deadline, budget)
        return _Deadlined(channel, deadline)

    def log(self, request: object) -> None:
        return None
