"""
A circuit breaker per inference node, as an explicit state machine (Automat), fed time.

closed --N consecutive failures--> open --cooldown elapsed--> half_open
half_open --probe succeeds--> closed;  half_open --probe fails--> open
In half_open exactly one request (the probe) is let through.
"""

from __future__ import annotations

from collections.abc import Callable

from automat import MethodicalMachine

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    _machine = MethodicalMachine()

    def __init__(self, failures_to_open: int, cooldown: float, on_change: Callable[[str], None] | None = None) -> None:
        if failures_to_open < 1 or cooldown <= 0:
            raise ValueError("failures_to_open must be at least 1 and cooldown positive")
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self._on_change = on_change
        self.state = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    # states

    @_machine.state(initial=True)
    def _closed(self) -> None:
        "Requests flow; consecutive failures are counted."

    @_machine.state()
    def _open(self) -> None:
        "No requests until the cooldown has passed."

    @_machine.state()
    def _half_open(self) -> None:
        "One probe request decides."

    # inputs

    @_machine.input()
    def _trip(self, now: float) -> None:
        "Too many failures, or the probe failed."

    @_machine.input()
    def _cooled(self) -> None:
        "The cooldown has passed."

    @_machine.input()
    def _recovered(self) -> None:
        "The probe succeeded."

    # outputs

    @_machine.output()
    def _enter_open(self, now: float) -> None:
        self._opened_at = now
        self._probing = False
        self._set("open")

    @_machine.output()
    def _enter_half_open(self) -> None:
        self._set("half_open")

    @_machine.output()
    def _enter_closed(self) -> None:
        self._failures = 0
        self._probing = False
        self._set("closed")

    _closed.upon(_trip, enter=_open, outputs=[_enter_open])
    _open.upon(_cooled, enter=_half_open, outputs=[_enter_half_open])
    _half_open.upon(_trip, enter=_open, outputs=[_enter_open])
    _half_open.upon(_recovered, enter=_closed, outputs=[_enter_closed])

    def _set(self, state: str) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)

    # the public face: ask, then report

    def allow(self, now: float) -> bool:
        """May a request go to this node now? In half_open, only one probe at a time."""
        if self.state == "open" and now - self._opened_at >= self.cooldown:
            self._cooled()
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def state_at(self, now: float) -> str:
        """The state as it stands at `now`, for the operator's gauge: open turns half_open when
        its cooldown has passed, though the machine moves only when a request asks."""
        if self.state == "open" and now - self._opened_at >= self.cooldown:
            return "half_open"
        return self.state

    def available(self, now: float) -> bool:
        """Like allow(), without taking the probe slot (for readiness and balancing)."""
        if self.state == "open":
            return now - self._opened_at >= self.cooldown
        return self.state == "closed" or not self._probing

    def success(self) -> None:
        if self.state == "half_open":
            self._recovered()
        self._failures = 0

    def abandon(self) -> None:
        """A request ended without a verdict on the node (its client left): in half_open,
        let another probe through, or the node would never be tried again."""
        if self.state == "half_open":
            self._probing = False

    def failure(self, now: float) -> None:
        if self.state == "half_open":
            self._trip(now)
        elif self.state == "closed":
            self._failures += 1
            if self._failures >= self.failures_to_open:
                self._trip(now)
