"""
The set of inference nodes, sans-IO: health, breakers, outstanding streams, and the choice.

A node takes chats when its last health check passed and its breaker lets a request
through. Balancing is round-robin over those nodes, or least outstanding streams.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .breaker import CircuitBreaker


@dataclass(eq=False)
class Node:
    name: str  # the configured URL; also the metrics label
    client: Any  # the adapter that talks to it (LlamaServer)
    breaker: CircuitBreaker
    healthy: bool = False
    outstanding: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class NodePool:
    def __init__(self, nodes: Iterable[Node], balance: str = "round_robin") -> None:
        if balance not in ("round_robin", "least_streams"):
            raise ValueError("balance must be round_robin or least_streams")
        self.nodes = list(nodes)
        self.balance = balance
        self._next = 0

    def ready(self, now: float) -> bool:
        return any(n.healthy and n.breaker.available(now) for n in self.nodes)

    def choose(self, now: float, exclude: Iterable[Node] = ()) -> Node | None:
        excluded = set(map(id, exclude))
        candidates = [n for n in self._order() if id(n) not in excluded and n.healthy and n.breaker.available(now)]
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
