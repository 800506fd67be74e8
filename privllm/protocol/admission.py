"""
Admission of a chat request, sans-IO: every check that happens before the answer starts.

Cheap checks come first (rate limit, shape, freshness, key, replay) so a flood costs
little; decryption comes last, and only a request that decrypted is remembered.
"""

from __future__ import annotations

from dataclasses import dataclass

from .envelope import Envelope, parse_envelope
from .errors import RATE_LIMITED, UNAVAILABLE, UNKNOWN_KEY, RequestRejected
from .keyring import KeyRing
from .ratelimit import RateLimiter
from .replay import ReplayWindow
from .request import OpenedRequest, open_request


@dataclass(frozen=True)
class Admitted:
    envelope: Envelope
    opened: OpenedRequest


class Admission:
    def __init__(self, ring: KeyRing, replay: ReplayWindow, per_address: RateLimiter, max_body: int) -> None:
        self.ring = ring
        self.replay = replay
        self.per_address = per_address
        self.max_body = max_body

    def admit(self, body: bytes, address: str, now: float, backend_ready: bool) -> Admitted:
        """Return the opened request, or raise RequestRejected with the plaintext error to send."""
        wait = self.per_address.check(address, now)
        if wait:
            raise RequestRejected(RATE_LIMITED, retry_after=wait)
        if not backend_ready:
            raise RequestRejected(UNAVAILABLE)
        envelope = parse_envelope(body, max_ciphertext=self.max_body)
        seconds = int(now)
        self.replay.check_fresh(envelope.timestamp, seconds)
        key = self.ring.accepting(envelope.key_id, seconds)
        if key is None:
            raise RequestRejected(UNKNOWN_KEY)
        self.replay.check_unseen(envelope.request_id, envelope.encapsulated_key, seconds)
        opened = open_request(envelope, key.private_key)
        self.replay.remember(envelope.request_id, envelope.encapsulated_key, envelope.timestamp, seconds)
        return Admitted(envelope, opened)
