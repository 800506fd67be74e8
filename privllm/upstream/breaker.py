"""
A circuit breaker per inference node, as an explicit state machine fed time.

closed --N consecutive failures--> open --cooldown elapsed--> half_open
half_open --probe succeeds--> closed;  half_open --probe fails--> open
In half_open exactly one request (the probe) is let through.

The state lives in one field, moved only through _MOVES (as privllm.protocol.life's chat
machine). Automat has no guards, and open's way out depends on the time a request asks at, so
an Automat machine needed a second copy of its state to decide which input to feed.
"""

from __future__ import annotations

from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)
# (state, event) -> next state; anything else is a bug in this class.
_MOVES = {
    (CLOSED, "trip"): OPEN,
    (OPEN, "cooled"): HALF_OPEN,
    (HALF_OPEN, "trip"): OPEN,
    (HALF_OPEN, "recovered"): CLOSED,
}

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "STATES", "CircuitBreaker"]


class CircuitBreaker:
    def __init__(self, failures_to_open: int, cooldown: float, on_change: Callable[[str], None] | None = None) -> None:
        if failures_to_open < 1 or cooldown <= 0:
            raise ValueError("failures_to_open must be at least 1 and cooldown positive")
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self._on_change = on_change
        self._state = CLOSED
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0  # while open
        self._probing = False  # while half_open: the one probe is out

    @property
    def state(self) -> str:
        return self._state

    def _move(self, event: str) -> None:
        self._state = _MOVES[(self._state, event)]
        self._failures = 0
        self._probing = False
        if self._on_change is not None:
            self._on_change(self._state)

    def _cooled(self, now: float) -> bool:
        return self._state == OPEN and now - self._opened_at >= self.cooldown

    # the public face: ask, then report

    def allow(self, now: float) -> bool:
        """May a request go to this node now? In half_open, only one probe at a time."""
        if self._cooled(now):
            self._move("cooled")
        if self._state == CLOSED:
            return True
        if self._state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def state_at(self, now: float) -> str:
        """The state as it stands at `now`, for the operator's gauge: open turns half_open when
        its cooldown has passed, though the machine moves only when a request asks."""
        return HALF_OPEN if self._cooled(now) else self._state

    def available(self, now: float) -> bool:
        """Like allow(), without taking the probe slot (for readiness and balancing)."""
        state = self.state_at(now)
        return state == CLOSED or (state == HALF_OPEN and not self._probing)

    def success(self) -> None:
        if self._state == HALF_OPEN:
            self._move("recovered")
        self._failures = 0

    def abandon(self) -> None:
        """A request ended without a verdict on the node (its client left): in half_open,
        let another probe through, or the node would never be tried again."""
        if self._state == HALF_OPEN:
            self._probing = False

    def failure(self, now: float) -> None:
        if self._state == HALF_OPEN:
            self._trip(now)
        elif self._state == CLOSED:
            self._failures += 1
            if self._failures >= self.failures_to_open:
                self._trip(now)

    def _trip(self, now: float) -> None:
        self._opened_at = now
        self._move("trip")
