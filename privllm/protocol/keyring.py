"""
The router's HPKE key ring, sans-IO: which keys exist, which are published, which are accepted.

Key i is published as `current` from its `not_before` for one rotation interval, and as
`next` during the interval before. It is accepted from the moment it is published until
its `not_after`, which is one rotation interval plus an overlap after its `not_before`, so
a client holding a key set fetched just before a rotation still succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .keyset import PublishedKey

KEY_ID_SPACE = 256


@dataclass(frozen=True)
class RingKey:
    key_id: int
    private_key: bytes
    public_key: bytes
    not_before: int
    not_after: int


class KeyRing:
    def __init__(self, keys: list[RingKey], interval: int, overlap: int) -> None:
        if interval <= 0 or overlap < 0:
            raise ValueError("interval must be positive and overlap not negative")
        self.interval = interval
        self.overlap = overlap
        self._keys = sorted(keys, key=lambda k: k.not_before)

    @property
    def keys(self) -> list[RingKey]:
        return list(self._keys)

    def _current(self, now: int) -> RingKey | None:
        started = [k for k in self._keys if k.not_before <= now < k.not_before + self.interval]
        return started[-1] if started else None

    def _free_key_id(self) -> int:
        used = {k.key_id for k in self._keys}
        last = self._keys[-1].key_id if self._keys else KEY_ID_SPACE - 1
        for step in range(1, KEY_ID_SPACE + 1):
            candidate = (last + step) % KEY_ID_SPACE
            if candidate not in used:
                return candidate
        raise RuntimeError("no free key id")  # impossible with at most a few live keys

    def _add(self, not_before: int, new_keypair: Callable[[], tuple[bytes, bytes]]) -> RingKey:
        private, public = new_keypair()
        key = RingKey(self._free_key_id(), private, public, not_before, not_before + self.interval + self.overlap)
        self._keys.append(key)
        self._keys.sort(key=lambda k: k.not_before)
        return key

    def refresh(self, now: int, new_keypair: Callable[[], tuple[bytes, bytes]]) -> bool:
        """Drop expired keys and make sure a current and a next key exist. Return True on change."""
        before = list(self._keys)
        self._keys = [k for k in self._keys if now < k.not_after]
        current = self._current(now) or self._add(now, new_keypair)
        following = current.not_before + self.interval
        if not any(k.not_before == following for k in self._keys):
            self._add(following, new_keypair)
        return self._keys != before

    def published(self, now: int) -> list[PublishedKey]:
        current = self._current(now)
        if current is None:
            return []
        out = [PublishedKey(current.key_id, current.public_key, current.not_before, current.not_after, "current")]
        out += [
            PublishedKey(k.key_id, k.public_key, k.not_before, k.not_after, "next")
            for k in self._keys
            if k.not_before == current.not_before + self.interval
        ]
        return out

    def accepting(self, key_id: int, now: int) -> RingKey | None:
        """The key for `key_id` if a request may use it now: next, current, or previous until not_after."""
        for k in self._keys:
            if k.key_id == key_id and now < k.not_after and k.not_before <= now + self.interval:
                return k
        return None
