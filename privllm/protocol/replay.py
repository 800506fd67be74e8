"""
The replay window, sans-IO: timestamps must be fresh, and a fresh request is accepted once.

Fresh means at most `window` seconds old and at most `future_skew` seconds ahead (a few
seconds of clock drift; a far-future timestamp would otherwise keep an entry for two
windows). A request is remembered, by its id and by its encapsulated key, exactly as long
as it could still pass the timestamp check (until timestamp + window).

Memory is bounded twice: overall (`max_entries`) and per client address or prefix
(`max_per_address`), so one party filling its share is refused alone (429) while others go
on. Only if the whole window is full (many parties at once) is everyone refused (503): the
window fails closed rather than forgetting live entries. Room is checked before
decryption, so a request that opens is always remembered, even if it is then refused.
"""

from __future__ import annotations

from .errors import RATE_LIMITED, REPLAY, STALE, UNAVAILABLE, RequestRejected
from .expiring import ExpiringSet

__all__ = ["ENTRIES_PER_REQUEST", "ReplayWindow", "check_fresh"]

ENTRIES_PER_REQUEST = 2  # its request id and its encapsulated key


def check_fresh(timestamp: int, now: int, window: int, future_skew: int) -> None:
    """The freshness rule, for every backend of the window: stateless, checked before any state."""
    if not now - window <= timestamp <= now + future_skew:
        raise RequestRejected(STALE)


class ReplayWindow:
    MIN_WINDOW = 2

    def __init__(self, window: int, max_entries: int, future_skew: int, max_per_address: int | None = None) -> None:
        if window < self.MIN_WINDOW or not 0 <= future_skew <= window:
            raise ValueError("window must be at least 2 s, future_skew within 0..window")
        per_address = max_entries if max_per_address is None else max_per_address
        if max_entries < ENTRIES_PER_REQUEST or per_address < ENTRIES_PER_REQUEST:
            raise ValueError("max_entries and max_per_address must hold at least one request")
        self.window = window
        self.future_skew = future_skew
        self._seen = ExpiringSet(max_entries, per_address)

    def __len__(self) -> int:
        return len(self._seen)

    def entries(self, now: int) -> int:
        """Entries still held at `now` (two per remembered request)."""
        self._seen.purge(now)
        return len(self._seen)

    def owned(self, address: str) -> int:
        return self._seen.owned(address)

    @property
    def longest_life(self) -> int:
        """The most seconds an entry is kept: the whole window past a timestamp at the skew."""
        return self.window + self.future_skew + 1

    def check_fresh(self, timestamp: int, now: int) -> None:
        check_fresh(timestamp, now, self.window, self.future_skew)

    def check_unseen(self, request_id: str, encapsulated_key: bytes, now: int) -> None:
        self._seen.purge(now)
        if ("id", request_id) in self._seen or ("enc", encapsulated_key) in self._seen:
            raise RequestRejected(REPLAY, reason="replay")

    def check_room(self, address: str, now: int, share: int | None = None) -> None:
        """Before decryption: refuse unless this request could be remembered. `share`: the
        address's entries for this call, instead of `max_per_address` (a relay's bigger one)."""
        self._seen.purge(now)
        if self._seen.full(address, ENTRIES_PER_REQUEST, share):
            if len(self._seen) + ENTRIES_PER_REQUEST > self._seen.max_entries:
                raise RequestRejected(UNAVAILABLE, reason="replay_room")
            raise RequestRejected(RATE_LIMITED, retry_after=self.longest_life, reason="replay_room")

    def remember(
        self,
        request_id: str,
        encapsulated_key: bytes,
        timestamp: int,
        now: int,
        address: str,
        share: int | None = None,
    ) -> None:
        """Call only after the request decrypted, so a forged copy cannot burn a real id."""
        self.check_unseen(request_id, encapsulated_key, now)
        self.check_room(address, now, share)
        expires = timestamp + self.window + 1
        self._seen.add(("id", request_id), expires, address, share)
        self._seen.add(("enc", encapsulated_key), expires, address, share)
