"""Poll the backend's readiness on a timer, so a chat can be refused before decryption when it is down."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall


class HealthMonitor(Service):
    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        interval: float,
        clock: Any,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._on_change = on_change
        self.ready = False

    async def _check(self) -> bool:
        ready = await self._probe()
        if ready != self.ready and self._on_change is not None:
            self._on_change(ready)
        self.ready = ready
        return ready

    def check(self) -> Deferred[bool]:
        return ensureDeferred(self._check())

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
