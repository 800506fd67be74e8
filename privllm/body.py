"""Receive an HTTP response body piece by piece (used by the router upstream and by the client)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone


class BodyStream(Protocol):
    """Hands each piece to `on_data` as it comes; `stop()` drops the connection at once.

    `done` fires when the body ends, or fails with why it did not end cleanly, including
    an exception raised by `on_data` (which also stops the body).
    """

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            self._on_data(data)
        except Exception:
            failure = Failure()
            self.stop()
            if not self.done.called:
                self.done.errback(failure)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()
