"""
Admission of a chat request, sans-IO: every check that happens before the answer starts.

Cheap checks come first (address rate limit, backend, global stream cap, shape, proof of
work under stress, freshness, key, replay) so a flood costs little; decryption comes
last, then the per-device rate limit (only a request that opened has proven its device
key, so nobody can spend someone else's quota). Only a request that passed everything
is remembered in the replay window.
"""

from __future__ import annotations

from dataclasses import dataclass

from .envelope import Envelope, parse_envelope
from .errors import POW_REQUIRED, RATE_LIMITED, UNAVAILABLE, UNKNOWN_KEY, RequestRejected
from .keyring import KeyRing
from .pow import Challenges, DifficultyPolicy, PowError, RateMeter
from .ratelimit import RateLimiter
from .replay import ReplayWindow
from .request import OpenedRequest, open_request
from .slots import StreamSlots


@dataclass(frozen=True)
class Admitted:
    envelope: Envelope
    opened: OpenedRequest


class PowGate:
    """Asks for proof of work when the load crosses the policy's threshold (or when forced)."""

    def __init__(self, challenges: Challenges, policy: DifficultyPolicy, forced: bool = False) -> None:
        self.challenges = challenges
        self.policy = policy
        self.forced = forced
        self.rate = RateMeter()

    def check(self, envelope: Envelope, active_streams: int, now: float) -> None:
        difficulty = self.policy.difficulty(active_streams, self.rate.rate(now), self.forced)
        if difficulty == 0:
            return
        if envelope.pow is not None:
            try:
                self.challenges.verify(envelope.pow[0], envelope.pow[1], envelope.request_id, now)
                return
            except PowError:
                pass
        raise RequestRejected(POW_REQUIRED, body=self.challenges.issue(difficulty, now))


class Admission:
    def __init__(
        self,
        ring: KeyRing,
        replay: ReplayWindow,
        per_address: RateLimiter,
        max_body: int,
        per_device: RateLimiter | None = None,
        slots: StreamSlots | None = None,
        pow_gate: PowGate | None = None,
    ) -> None:
        self.ring = ring
        self.replay = replay
        self.per_address = per_address
        self.max_body = max_body
        self.per_device = per_device
        self.slots = slots
        self.pow_gate = pow_gate

    def admit(self, body: bytes, address: str, now: float, backend_ready: bool) -> Admitted:
        """Return the opened request, or raise RequestRejected with the plaintext error to send."""
        if self.pow_gate is not None:
            self.pow_gate.rate.add(now)
        wait = self.per_address.check(address, now)
        if wait:
            raise RequestRejected(RATE_LIMITED, retry_after=wait)
        if not backend_ready or (self.slots is not None and self.slots.full()):
            raise RequestRejected(UNAVAILABLE)
        envelope = parse_envelope(body, max_ciphertext=self.max_body)
        if self.pow_gate is not None:
            self.pow_gate.check(envelope, self.slots.active if self.slots else 0, now)
        seconds = int(now)
        self.replay.check_fresh(envelope.timestamp, seconds)
        key = self.ring.accepting(envelope.key_id, seconds)
        if key is None:
            raise RequestRejected(UNKNOWN_KEY)
        self.replay.check_unseen(envelope.request_id, envelope.encapsulated_key, seconds)
        opened = open_request(envelope, key.secret)
        if self.per_device is not None:
            wait = self.per_device.check(envelope.device_pubkey, now)
            if wait:
                raise RequestRejected(RATE_LIMITED, retry_after=wait)
        self.replay.remember(envelope.request_id, envelope.encapsulated_key, envelope.timestamp, seconds)
        return Admitted(envelope, opened)
