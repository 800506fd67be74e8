"""
The replay window, sans-IO: timestamps must be fresh, and a fresh request is accepted once.

An accepted request is remembered exactly as long as it could still pass the timestamp
check (until timestamp + window). Memory is bounded; when full, new requests are refused
rather than live entries forgotten: the window fails closed.
"""

from __future__ import annotations

from .errors import REPLAY, STALE, UNAVAILABLE, RequestRejected


class ReplayWindow:
    MIN_WINDOW = 2

    def __init__(self, window: int, max_entries: int) -> None:
        if window < self.MIN_WINDOW or max_entries < 1:
            raise ValueError("window must be at least 2 s and max_entries at least 1")
        self.window = window
        self.max_entries = max_entries
        self._expiry: dict[tuple[str, object], int] = {}
        self._buckets: dict[int, list[tuple[str, object]]] = {}
        self._purged_until: int | None = None

    def __len__(self) -> int:
        return len(self._expiry)

    def check_fresh(self, timestamp: int, now: int) -> None:
        if abs(now - timestamp) > self.window:
            raise RequestRejected(STALE)

    def check_unseen(self, request_id: str, encapsulated_key: bytes, now: int) -> None:
        self._purge(now)
        if ("id", request_id) in self._expiry or ("enc", encapsulated_key) in self._expiry:
            raise RequestRejected(REPLAY)

    def remember(self, request_id: str, encapsulated_key: bytes, timestamp: int, now: int) -> None:
        """Call only after the request decrypted, so a forged copy cannot burn a real id."""
        self.check_unseen(request_id, encapsulated_key, now)
        if len(self._expiry) + 2 > self.max_entries:
            raise RequestRejected(UNAVAILABLE)
        expires = timestamp + self.window + 1
        for entry in (("id", request_id), ("enc", encapsulated_key)):
            self._expiry[entry] = expires
            self._buckets.setdefault(expires, []).append(entry)

    def _purge(self, now: int) -> None:
        # Each second's bucket is visited once: amortised O(1) per request. After a long
        # idle gap (or a clock jump) only the buckets that exist are visited.
        last = self._purged_until
        if last is None or now - last > 2 * self.window + 2:
            due: list[int] | range = [second for second in self._buckets if second <= now]
        else:
            due = range(last, now + 1)
        for second in due:
            for entry in self._buckets.pop(second, ()):
                del self._expiry[entry]
        self._purged_until = now + 1 if last is None else max(last, now + 1)
