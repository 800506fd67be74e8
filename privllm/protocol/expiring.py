"""
A set whose entries each live until a given second, sans-IO: the memory of the replay
window and of spent proof-of-work challenges.

Entries sit in buckets by the second they expire; a heap orders the buckets, so purging
visits each bucket once (amortised O(1) per entry) and a clock jump costs nothing extra.
The set is bounded, overall and per owner (a client address or prefix): the caller asks
for room first and refuses when there is none, so live entries are never forgotten.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable

__all__ = ["ExpiringSet"]


class ExpiringSet:
    def __init__(self, max_entries: int, max_per_owner: int | None = None) -> None:
        if max_entries < 1 or (max_per_owner is not None and not 1 <= max_per_owner <= max_entries):
            raise ValueError("max_entries must be positive and max_per_owner within 1..max_entries")
        self.max_entries = max_entries
        self.max_per_owner = max_per_owner
        self._owner: dict[Hashable, Hashable] = {}  # entry -> owner
        self._owned: dict[Hashable, int] = {}  # owner -> live entries
        self._buckets: dict[int, list[Hashable]] = {}  # expiry second -> entries
        self._due: list[int] = []  # the buckets' seconds, a heap

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, entry: Hashable) -> bool:
        return entry in self._owner

    def owned(self, owner: Hashable) -> int:
        return self._owned.get(owner, 0)

    def full(self, owner: Hashable, count: int = 1, share: int | None = None) -> bool:
        """Whether `count` more entries for `owner` would exceed the cap (overall first).
        `share`: this owner's cap for this call, instead of `max_per_owner`."""
        if len(self._owner) + count > self.max_entries:
            return True
        share = self.max_per_owner if share is None else share
        return share is not None and self.owned(owner) + count > share

    def add(self, entry: Hashable, expires: int, owner: Hashable, share: int | None = None) -> None:
        """Keep `entry` until the clock reaches `expires`. The caller has checked `full`."""
        if entry in self._owner or self.full(owner, share=share):
            raise ValueError("already present, or no room: check first")
        self._owner[entry] = owner
        self._owned[owner] = self.owned(owner) + 1
        bucket = self._buckets.get(expires)
        if bucket is None:
            bucket = self._buckets[expires] = []
            heapq.heappush(self._due, expires)
        bucket.append(entry)

    def purge(self, now: int) -> None:
        while self._due and self._due[0] <= now:
            for entry in self._buckets.pop(heapq.heappop(self._due)):
                owner = self._owner.pop(entry)
                left = self._owned[owner] - 1
                if left:
                    self._owned[owner] = left
                else:
                    del self._owned[owner]  # no owner record outlives its entries
