"""
The request-read deadline, sans IO: a connection is either answering a request or at most
`seconds` away from having read one whole.

It runs from accept (through the TLS handshake and the request line) and again whenever
the connection's last answer is done (the wait for the next request on a kept-alive
connection), and it is off while any request is being answered: it bounds reading a
request, never writing an answer, however long a stream lasts.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["ReadDeadline"]


class ReadDeadline:
    def __init__(self, clock: IReactorTime, seconds: float) -> None:
        self._clock = clock  # an IReactorTime
        self._seconds = seconds
        self._expire: Callable[[], object] | None = None
        self._call: IDelayedCall | None = None
        self.answering = 0

    def start(self, expire: Callable[[], object]) -> None:
        """The connection (or stream) is open and nothing is read yet; `expire` closes it."""
        self._expire = expire
        self._arm()

    def read(self) -> None:
        """A request was read whole and is being answered."""
        self.answering += 1
        self._cancel()

    def answered(self) -> None:
        self.answering -= 1
        if self.answering == 0 and self._expire is not None:
            self._arm()

    def stop(self) -> None:
        """The connection is gone: nothing left to expire."""
        self._expire = None
        self._cancel()

    def _arm(self) -> None:
        self._cancel()
        self._call = self._clock.callLater(self._seconds, self._expired)

    def _cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _expired(self) -> None:
        self._call = None
        expire, self._expire = self._expire, None
        if expire is not None:
            expire()
