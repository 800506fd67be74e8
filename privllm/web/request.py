"""
The HTTP request and site: bodies kept in memory and bounded as they arrive, no version banner.

Twisted's Request spools a body over 100 kB, or of unknown length, to a temporary file.
A chat body must never touch the disk, so every body goes to memory and a body over the
limit is refused as soon as its size is known: from Content-Length before any of it is
read, or, for chunked bodies, the moment the count passes the limit.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.web import http, server

from ..protocol.encoding import dumps
from ..protocol.errors import TOO_LARGE, Rejection

SERVER_NAME = b"privllm"


def error_body(rejection: Rejection) -> bytes:
    return dumps({"error": rejection.code})


class PrivllmRequest(server.Request):
    _received = 0
    _too_large = False
    _refused_early = False
    _deadline: Any = None

    def __init__(self, channel: Any, *args: Any, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)
        # The whole request (headers and body) must arrive in time: a slowloris that trickles
        # bytes keeps an idle timer alive forever, but not this deadline.
        site = getattr(channel, "site", None)
        if site is not None and getattr(site, "request_read_timeout", None):
            self._deadline = site.reactor.callLater(site.request_read_timeout, self._read_timed_out)

    def _read_timed_out(self) -> None:
        self._deadline = None
        channel: Any = self.channel
        if isinstance(channel, http.HTTPChannel):
            if channel.transport is not None:
                channel.transport.abortConnection()
        elif channel is not None:
            channel.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    @property
    def _limit(self) -> int:
        channel: Any = self.channel
        return int(channel.site.max_body)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:  # type: ignore[override]
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
        self._cancel_deadline()
        if self._refused_early:
            return
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self._too_large:
            self.site = self.channel.site  # type: ignore[attr-defined]
            self.setResponseCode(TOO_LARGE.status)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"cache-control", b"no-store")
            self.write(error_body(TOO_LARGE))
            self.finish()
            return
        super().process()


class PrivllmSite(server.Site):
    """No access log (it would record addresses and paths), no tracebacks to clients."""

    requestFactory = PrivllmRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: object,
        max_body: int,
        reactor: Any = None,
        idle_timeout: float = 60,
        request_read_timeout: float = 0,
    ) -> None:
        # Bodies are sealed JSON: never parse them as forms (Twisted would, with the email
        # package's header parser, for every POST).
        super().__init__(resource, reactor=reactor, timeout=idle_timeout, parsePOSTFormSubmission=False)
        self.max_body = max_body
        self.request_read_timeout = request_read_timeout

    def log(self, request: object) -> None:
        return None
