"""
The set of inference nodes, sans-IO: health, breakers, outstanding streams, and the choice.

A node takes chats when its last health check passed and its breaker lets a request
through. A node seen dead between checks is marked down at once (`mark_down`); its
health monitor, told through `on_down`, puts it back once it answers again. Balancing
is round-robin over those nodes, or least outstanding streams.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..config.schema import BALANCE, Backend
from .breaker import CircuitBreaker
from .contracts import Dialect, UpstreamClient
from .openai_stream import ChatDialect

__all__ = ["Node", "NodePool", "backoff"]


@dataclass(eq=False)
class Node:
    name: str  # the configured URL; also the metrics label
    client: UpstreamClient  # the adapter that talks to it (LlamaServer)
    breaker: CircuitBreaker
    healthy: bool = False
    outstanding: int = 0
    dialect: Dialect = field(default_factory=ChatDialect)  # how to talk to it: chat, or harmony
    on_down: Callable[[], None] | None = None  # tells its health monitor (HealthMonitor.down)


class NodePool:
    def __init__(
        self, nodes: Iterable[Node], balance: str = Backend.balance, max_per_node: int = 1 << 30, queue_size: int = 0
    ) -> None:
        if balance not in BALANCE:
            raise ValueError(f"balance must be one of {', '.join(BALANCE)}")
        self.nodes = list(nodes)
        self.balance = balance
        self.max_per_node = max_per_node  # llama-server's --parallel slots on each node
        self.queue_size = queue_size
        self._waiting: deque[Callable[[], None]] = deque()
        self._taken = 0  # takes so far: tells whether a woken waiter took the free slot
        self._next = 0

    def saturated(self, now: float) -> bool:
        """Every usable node is at its cap: a request may wait in the queue for a slot."""
        usable = [n for n in self.nodes if n.healthy and n.breaker.available(now)]
        return bool(usable) and all(n.outstanding >= self.max_per_node for n in usable)

    def wait(self, callback: Callable[[], None]) -> bool:
        """Queue `callback` for the next free slot; False when the queue is full."""
        if len(self._waiting) >= self.queue_size:
            return False
        self._waiting.append(callback)
        return True

    def forget(self, callback: Callable[[], None]) -> None:
        if callback in self._waiting:
            self._waiting.remove(callback)

    def take(self, node: Node) -> None:
        node.outstanding += 1
        self._taken += 1

    def release(self, node: Node) -> None:
        """A stream left `node`: hand the slot to the longest-waiting request; if that one
        ends without taking it (a node went down, its conversation was too long), the next."""
        node.outstanding -= 1
        for _ in range(len(self._waiting)):  # each at most once: one that waits again goes last
            taken = self._taken
            self._waiting.popleft()()
            if self._taken != taken:
                return

    def mark_down(self, node: Node) -> None:
        """A connection to `node` failed, or its process exited: take it out of service now;
        its health monitor (told through `on_down`) puts it back once it answers again."""
        node.healthy = False
        if node.on_down is not None:
            node.on_down()

    def ready(self, now: float) -> bool:
        return any(n.healthy and n.breaker.available(now) for n in self.nodes)

    def choose(self, now: float, exclude: Iterable[Node] = ()) -> Node | None:
        excluded = set(map(id, exclude))
        candidates = [
            n
            for n in self._order()
            if id(n) not in excluded and n.healthy and n.outstanding < self.max_per_node and n.breaker.available(now)
        ]
        if self.balance == "least_streams":
            candidates.sort(key=lambda n: n.outstanding)  # stable: ties keep round-robin order
        for node in candidates:
            if node.breaker.allow(now):
                return node
        return None

    def _order(self) -> list[Node]:
        start = self._next % len(self.nodes) if self.nodes else 0
        self._next += 1
        return self.nodes[start:] + self.nodes[:start]


def backoff(attempt: int, base: float, cap: float, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Capped exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng(0.0, min(cap, base * (2**attempt)))
