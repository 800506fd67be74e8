"""
A rate limiter, sans-IO: GCRA (the generic cell rate algorithm), one number of state per key.

Keys are whatever the caller counts (a client address); idle entries expire, and the
table is bounded. When the table is full of live entries, a new key is refused: the
limiter fails closed rather than forgetting someone's debt.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable


class RateLimiter:
    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate, burst and max_keys must be positive")
        self._interval = 1.0 / rate
        self._tolerance = self._interval * (burst - 1)
        self._max_keys = max_keys
        self._tat: OrderedDict[Hashable, float] = OrderedDict()  # theoretical arrival time, oldest update first

    def __len__(self) -> int:
        return len(self._tat)

    def check(self, key: Hashable, now: float) -> int:
        """Count one request. Return 0 if it may go on, else the seconds to wait (at least 1)."""
        tat = self._tat.get(key)
        if tat is None:
            self._expire(now)
            if len(self._tat) >= self._max_keys:
                return 1
            tat = now
        tat = max(tat, now)
        if tat - self._tolerance > now:
            return max(1, math.ceil(tat - self._tolerance - now))
        self._tat[key] = tat + self._interval
        self._tat.move_to_end(key)
        return 0

    def _expire(self, now: float) -> None:
        # The least recently updated entries come first; drop those that no longer hold a debt.
        while self._tat:
            key, tat = next(iter(self._tat.items()))
            if tat > now:
                break
            del self._tat[key]
