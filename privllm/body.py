"""HTTP bodies for the router upstream and the client: a request body sent at once, and a
response body received piece by piece."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

__all__ = ["BodyStream", "BodyTooLarge", "BytesProducer", "read_bounded"]


class BodyStream(Protocol):
    """Hands each piece to `on_data` as it comes; `stop()` drops the connection at once.

    `done` fires when the body ends, or fails with why it did not end cleanly, including
    an exception raised by `on_data` (which also stops the body).
    """

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.done: Deferred[None] = Deferred(lambda _: self.stop())  # cancelling drops the connection

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            self._on_data(data)
        except Exception:
            # That failure first: stopping the body makes its connectionLost fail `done` with a
            # mere ConnectionDone, which readers take for a broken connection.
            self.done.errback(Failure())
            self.stop()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def stop(self) -> None:
        # IResponse.deliverBody connects its protocol to an IPushProducer, typed as Protocol's ITransport.
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()


class BodyTooLarge(Exception):
    """A response body passed the bound its reader set."""

    code = "body_too_large"


def read_bounded(response: Any, limit: int) -> Deferred[bytes]:
    """The whole body of `response`, or BodyTooLarge (and the connection dropped) past `limit`."""
    pieces: list[bytes] = []
    size = [0]

    def collect(data: bytes) -> None:
        size[0] += len(data)
        if size[0] > limit:
            raise BodyTooLarge()
        pieces.append(data)

    stream = BodyStream(collect)
    response.deliverBody(stream)
    return stream.done.addCallback(lambda _: b"".join(pieces))


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written in one go.

    Twisted's FileBodyProducer feeds a cooperator that writes over later reactor turns;
    a chat request is small and every turn before it leaves adds to time to first token.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        self._data = b""  # Twisted keeps the producer until the response ends: not the conversation
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
