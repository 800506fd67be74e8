"""
A rate limiter, sans-IO: GCRA (the generic cell rate algorithm), one number of state per key.

Keys are whatever the caller counts (a client address or prefix, a device key). A key is
idle once its theoretical arrival time has passed: it holds no debt and is dropped. Keys
sit in buckets by the whole second their debt ends, and each check frees every bucket that
is due, so every idle key goes within a second of going idle, whatever the other keys do;
each key moves bucket in O(1), each bucket is freed once, and there is at most one bucket
per whole second up to the furthest debt (burst / rate + 2). The table is bounded; when it is
full of keys that still owe, a new key is refused: the limiter fails closed rather than
forgetting someone's debt.

A call may bring its own `Budget` (rate and burst) for its key: an Oblivious HTTP relay, which
carries many clients, is held to a bigger one than a single client at the same kind of key.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["Budget", "RateLimiter"]


@dataclass(frozen=True)
class Budget:
    """A sustained rate (per second) and the burst allowed on top of it."""

    rate: float
    burst: int
    interval: float = field(init=False)
    tolerance: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate and burst must be positive")
        object.__setattr__(self, "interval", 1.0 / self.rate)
        object.__setattr__(self, "tolerance", self.interval * (self.burst - 1))


class RateLimiter:
    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self.budget = Budget(rate, burst)
        self._max_keys = max_keys
        self._tat: dict[Hashable, float] = {}  # theoretical arrival time
        self._buckets: dict[int, set[Hashable]] = {}  # ceil(tat) -> keys
        self._due: list[int] = []  # the buckets' seconds, a heap

    def __len__(self) -> int:
        return len(self._tat)

    def check(self, key: Hashable, now: float, budget: Budget | None = None) -> int:
        """Count one request. Return 0 if it may go on, else the seconds to wait (at least 1).
        `budget`: this call's, instead of the limiter's."""
        budget = budget or self.budget
        self._expire(now)
        old = self._tat.get(key)
        if old is None and len(self._tat) >= self._max_keys:
            return 1
        tat = now if old is None else max(old, now)
        if tat - budget.tolerance > now:
            return max(1, math.ceil(tat - budget.tolerance - now))
        self._set(key, old, tat + budget.interval)
        return 0

    def _set(self, key: Hashable, old: float | None, tat: float) -> None:
        if old is not None:
            self._buckets[math.ceil(old)].discard(key)
        second = math.ceil(tat)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = set()
            heapq.heappush(self._due, second)
        bucket.add(key)
        self._tat[key] = tat

    def _expire(self, now: float) -> None:
        # Every key in a bucket whose second has come owes nothing any more.
        while self._due and self._due[0] <= now:
            for key in self._buckets.pop(heapq.heappop(self._due)):
                del self._tat[key]
