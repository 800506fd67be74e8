"""Poll the backend's readiness, so a chat can be refused before decryption when it is down.

While the backend is not ready (starting, loading its model, or failed) it is polled
every `retry` seconds, so it is put back into service quickly; once ready, every
`interval` seconds. `down()` takes it out of service at once when it is seen dead
between polls (its process exited, a connection to it failed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["HealthMonitor"]


class HealthMonitor(Service):
    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        interval: float,
        clock: IReactorTime,
        on_change: Callable[[bool], None] | None = None,
        retry: float = 0.5,
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._retry = min(retry, interval)
        self._clock = clock
        self._on_change = on_change
        self._next: IDelayedCall | None = None
        self._downs = 0  # how often down() was called: a probe that spans one is stale
        self.ready = False

    async def _check(self) -> bool:
        downs = self._downs
        ready = await self._probe()
        if downs == self._downs:  # else it started before the node was seen dead: ignored
            self._set(ready)
        return self.ready

    def _set(self, ready: bool) -> None:
        if ready != self.ready and self._on_change is not None:
            self._on_change(ready)
        self.ready = ready

    def check(self) -> Deferred[bool]:
        return ensureDeferred(self._check())

    def down(self) -> None:
        """The backend was seen dead between polls: out of service now, polled at the `retry` pace.

        A probe in flight finishes, is ignored, and schedules the next at that pace itself. A
        poll already due sooner is kept, so a burst of failures cannot postpone it.
        """
        self._downs += 1
        self._set(False)
        if self._next is not None and self._next.active():
            self._next.reset(min(self._next.getTime() - self._clock.seconds(), self._retry))

    def _tick(self) -> None:
        self._next = None
        d = self.check()
        d.addBoth(self._schedule)

    def _schedule(self, _: object) -> None:
        if self.running:
            self._next = self._clock.callLater(self._interval if self.ready else self._retry, self._tick)

    def startService(self) -> None:
        super().startService()
        self._tick()

    def stopService(self) -> None:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
