"""
The gauges that change with time rather than with requests: proof of work asked now, the
replay window's fill, the current HPKE key's age and the time to the next one, and each
node's breaker as it stands (an open breaker turns half open by the clock, not by a request).
A timer sets them every few seconds, so a scrape between chats still sees the truth.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..protocol.admission import PowGate
from ..protocol.keyring import KeyRing
from ..state.interface import AdmissionState, StateUnavailable
from ..upstream.pool import Node
from .metrics import RouterMetrics

__all__ = ["NodeHealth", "StatusGauges"]

log = Logger()


class StatusGauges(Service):
    EVERY = 5.0  # seconds; a scrape is usually every 15 s

    def __init__(
        self,
        metrics: RouterMetrics,
        clock: IReactorTime,
        ring: KeyRing,
        state: AdmissionState,
        replay_capacity: int,
        pow_gate: PowGate | None,
        nodes: Sequence[Node] = (),
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._ring = ring
        self._state = state
        self._pow_gate = pow_gate
        self._nodes = nodes
        metrics.replay_capacity.set(replay_capacity)
        self._loop = LoopingCall(self._update)
        self._loop.clock = clock

    def _update(self) -> Deferred[None]:
        """Never fails: a gauge that stopped would look healthy for ever."""
        d = maybeDeferred(self.update)
        return d.addErrback(lambda f: log.failure("status gauges: update failed", f))

    def update(self) -> Deferred[None]:
        now = self._clock.seconds()
        m = self._metrics
        status = self._ring.rotation_status(int(now))
        if status is not None:
            m.key_age.set(status[0])
            m.rotation_due.set(status[1])
        m.pow_difficulty.set(self._pow_gate.difficulty(self._state.load(now)) if self._pow_gate else 0)
        for node in self._nodes:
            m.show_breaker(node.name, node.breaker.state_at(now))
        entries = self._state.replay_entries(now)
        entries.addCallback(m.replay_entries.set)
        # Redis out of reach: the gauge keeps its last value; the refusals say the rest.
        return entries.addErrback(lambda f: f.trap(StateUnavailable))

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.EVERY, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()


class NodeHealth:
    """What a node's health monitor reports, applied: the pool's flag, the gauge, one log line."""

    def __init__(self, node: Node, metrics: RouterMetrics) -> None:
        self._node = node
        self._metrics = metrics

    def __call__(self, ready: bool) -> None:
        self._node.healthy = ready
        self._metrics.node_healthy.labels(self._node.name).set(1 if ready else 0)
        log.info("node {node} is {outcome}", node=self._node.name, outcome="up" if ready else "down")
