"""
Nothing serves before the shared state is safe: the router's listener starts only once Redis
has answered and passed its checks (privllm.state.redis.start).

Redis that cannot be reached at start is tried again with backoff, while the router serves
nothing (one process: its port is not open; a worker: it does not accept from its parent's
port, whose queue holds the connections); Redis that is unsafe (it would persist or evict the
replay window) or shared under another state key stops the process with one clear line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config.schema import State
from ..keys.files import KeyFileError
from .interface import Limits
from .redis import RedisState, RedisStateError, RedisUnreachable, connect, password, state_key

__all__ = ["RETRY_FIRST", "RETRY_MAX", "SharedStateService"]

RETRY_FIRST = 0.5  # seconds before trying an unreachable Redis again, doubling each time
RETRY_MAX = 10.0
log = Logger()


class SharedStateService(Service):
    def __init__(
        self,
        config: State,
        limits: Limits,
        state_dir: str,
        dev: bool,
        reactor: IReactorTime,
        serve: Callable[[RedisState], None],
        create_key: bool = True,
    ) -> None:
        # The secrets are read (and their modes checked) now, so a bad file stops the start.
        state_key(config, state_dir, dev, create_key)
        password(config)
        self._config, self._limits, self._state_dir, self._dev = config, limits, state_dir, dev
        self._reactor = reactor
        self._serve = serve
        self._retry: IDelayedCall | None = None
        self._delay = RETRY_FIRST
        self.state: RedisState | None = None

    def startService(self) -> None:
        super().startService()
        self._attempt()

    def stopService(self) -> Any:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.state is not None:
            return self.state.stop()
        return None

    def _attempt(self) -> None:
        self._retry = None
        started = connect(self._config, self._limits, self._state_dir, self._reactor, self._dev)
        started.addCallbacks(self._started, self._failed)

    def _started(self, state: RedisState) -> None:
        if not self.running:  # stopped meanwhile
            state.stop()
            return
        self.state = state
        log.info("shared state in Redis is ready")
        self._serve(state)

    def _failed(self, failure: Failure) -> None:
        if not self.running:
            return
        if failure.check(RedisUnreachable):
            log.warn("shared state not ready, trying again: {reason}", reason=str(failure.value))
            self._retry = self._reactor.callLater(self._delay, self._attempt)
            self._delay = min(RETRY_MAX, self._delay * 2)
            return
        reason = str(failure.value) if failure.check(RedisStateError, KeyFileError) else type(failure.value).__name__
        log.critical("privllm: {reason}", reason=reason)
        IReactorCore(self._reactor).stop()
