"""
The router's HPKE key ring, sans-IO: which keys exist, which are published, which are accepted.

Key i is published as `current` from its `not_before` for one rotation interval, and as
`next` during the interval before. It is accepted from the moment it is published until
its `not_after`, which is one rotation interval plus an overlap after its `not_before`, so
a client holding a key set fetched just before a rotation still succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from pyhpke import KEMKeyInterface

from . import suite
from .keyset import PublishedKey

__all__ = ["KEY_ID_SPACE", "KeyRing", "NewKey", "RingKey"]

KEY_ID_SPACE = 256


@dataclass(eq=False)  # a key is itself, never equal to a copy
class RingKey:
    """One key of the ring. `secret` is the only private key object the router opens requests
    with: built once when the key enters the ring, dropped when it leaves (OpenSSL then
    overwrites the key as it frees it), so no request copies or rebuilds it."""

    key_id: int
    secret: KEMKeyInterface
    public_key: bytes
    not_before: int
    not_after: int

    def wipe(self) -> None:
        if hasattr(self, "secret"):
            del self.secret  # a dropped key cannot be used by mistake: reading it raises


NewKey = Callable[[], KEMKeyInterface]


class KeyRing:
    def __init__(self, keys: list[RingKey], interval: int, overlap: int, last_key_id: int | None = None) -> None:
        if interval <= 0 or overlap < 0:
            raise ValueError("interval must be positive and overlap not negative")
        self.interval = interval
        self.overlap = overlap
        self._keys = sorted(keys, key=lambda k: k.not_before)
        # Ids are handed out in sequence (mod 256) so a dropped key's id is not reused soon:
        # a client may still hold a key set naming it.
        self.last_key_id = last_key_id if last_key_id is not None else max((k.key_id for k in keys), default=255)

    @property
    def keys(self) -> list[RingKey]:
        return list(self._keys)

    def rotation_status(self, now: int) -> tuple[int, int] | None:
        """(age of the newest key already started, seconds until the newest key of all takes
        over), or None with no started key. `refresh` makes each key one interval before it
        takes over, so the second is normally in (0, interval]; at or below 0, no next key was
        made (published as `next`) in time, and when the current key's interval ends clients
        have no key to use. It reads 0 or less for up to a refresh period after each rotation."""
        started = [k for k in self._keys if k.not_before <= now]
        if not started:
            return None
        return now - started[-1].not_before, self._keys[-1].not_before - now

    def _current(self, now: int) -> RingKey | None:
        started = [k for k in self._keys if k.not_before <= now < k.not_before + self.interval]
        return started[-1] if started else None

    def _free_key_id(self) -> int:
        used = {k.key_id for k in self._keys}
        for step in range(1, KEY_ID_SPACE + 1):
            candidate = (self.last_key_id + step) % KEY_ID_SPACE
            if candidate not in used:
                self.last_key_id = candidate
                return candidate
        raise RuntimeError("no free key id")  # impossible with at most a few live keys

    def _add(self, not_before: int, new_key: NewKey) -> RingKey:
        secret = new_key()
        key = RingKey(
            self._free_key_id(),
            secret,
            suite.public_bytes(secret),
            not_before,
            not_before + self.interval + self.overlap,
        )
        self._keys.append(key)
        self._keys.sort(key=lambda k: k.not_before)
        return key

    def refresh(self, now: int, new_key: NewKey) -> bool:
        """Drop expired keys and make sure a current and a next key exist. Return True on change."""
        before = list(self._keys)
        self._drop(lambda k: now >= k.not_after)
        current = self._current(now) or self._add(now, new_key)
        following = current.not_before + self.interval
        if not any(k.not_before == following for k in self._keys):
            self._add(following, new_key)
        return self._keys != before

    def rotate_now(self, now: int, new_key: NewKey, revoke: bool = False) -> None:
        """Start a new current key at once. Keys not yet started are dropped; with `revoke`,
        every older key is dropped too (a suspected compromise), else they stay accepted
        until their not_after."""
        self._drop(lambda k: revoke or k.not_before > now)
        self._add(now, new_key)
        self.refresh(now, new_key)

    def copy(self) -> KeyRing:
        """A working copy to change in another thread while this ring serves. Its keys are new
        holders of the same private key objects, so dropping one of them (wipe) leaves ours
        usable; `adopt` takes the result back."""
        return KeyRing([replace(k) for k in self._keys], self.interval, self.overlap, self.last_key_id)

    def adopt(self, other: KeyRing) -> None:
        """Take the keys of a ring loaded from the shared file, which is used up: a key both
        rings hold stays ours and its copy is dropped, a key only we hold is dropped."""
        mine = {(k.key_id, k.not_before, k.public_key): k for k in self._keys}
        kept = []
        for key in other._keys:
            held = mine.pop((key.key_id, key.not_before, key.public_key), None)
            if held is not None:
                key.wipe()
            kept.append(held or key)
        for key in mine.values():
            key.wipe()
        self._keys = sorted(kept, key=lambda k: k.not_before)
        self.last_key_id = other.last_key_id
        other._keys = []

    def wipe(self) -> None:
        self._drop(lambda k: True)

    def _drop(self, condition: Callable[[RingKey], bool]) -> None:
        kept = []
        for k in self._keys:
            if condition(k):
                k.wipe()
            else:
                kept.append(k)
        self._keys = kept

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
