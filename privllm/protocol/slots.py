"""Caps on concurrent streams, sans-IO: a global cap and a cap per client address (checked
before decryption), and a cap per device (checked once decryption has proven the device key)."""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["CountPerKey", "StreamSlots"]


class CountPerKey:
    """Concurrent holds per key, at most `limit` each; no record outlives its holds."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the limit must be positive")
        self.limit = limit
        self._held: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def held(self, key: Hashable) -> int:
        return self._held.get(key, 0)

    def room(self, key: Hashable, limit: int | None = None) -> bool:
        """Whether `key` may take one more hold; `limit`: this call's, instead of the cap's."""
        return self.held(key) < (self.limit if limit is None else limit)

    def acquire(self, key: Hashable, limit: int | None = None) -> bool:
        held = self.held(key)
        if not self.room(key, limit):
            return False
        self._held[key] = held + 1
        return True

    def release(self, key: Hashable) -> None:
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]


class StreamSlots:
    def __init__(self, max_streams: int, max_per_device: int) -> None:
        self.max_streams = max_streams
        self.max_per_device = max_per_device
        self.active = 0
        self._per_device = CountPerKey(max_per_device)

    def full(self) -> bool:
        return self.active >= self.max_streams

    def acquire(self, device: bytes) -> bool:
        if self.full() or not self._per_device.acquire(device):
            return False
        self.active += 1
        return True

    def release(self, device: bytes) -> None:
        self._per_device.release(device)
        self.active -= 1
