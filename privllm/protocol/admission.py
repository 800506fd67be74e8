"""
Admission of a chat request, sans-IO: every check that happens before the answer starts.

Cheap checks come first (address rate limit, backend, global stream cap, the address's
concurrent streams, shape, proof of work under stress, freshness, key, replay, room in the
replay window) so a flood costs little; decryption comes last, then the per-device rate
limit (only a request that opened has proven its device key, so nobody can spend someone
else's quota). A request that opened is always remembered in the replay window, and any
refusal after that point is a `SealedRefusal`, sent inside the encrypted stream.

`address` is the client's address key (privllm.protocol.addresses): an IPv4 address or an
IPv6 prefix, never raw text from the request.
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
from .slots import CountPerKey, StreamSlots

ADDRESS_STREAMS_RETRY = 1  # seconds: streams end at any time


@dataclass(frozen=True)
class SealedRefusal:
    """A refusal decided after decryption: the stream's sealed final `error` chunk."""

    code: str  # one of life.ERROR_CODES
    message: str  # names no value from the request
    retry_after: int | None = None  # whole seconds, sent as "retry_after" when set


@dataclass(frozen=True)
class Admitted:
    envelope: Envelope
    opened: OpenedRequest
    address: str
    refusal: SealedRefusal | None = None  # set: end at once with it; nothing was taken


class PowGate:
    """Asks for proof of work when the load crosses the policy's threshold (or when forced)."""

    def __init__(self, challenges: Challenges, policy: DifficultyPolicy, forced: bool = False) -> None:
        self.challenges = challenges
        self.policy = policy
        self.forced = forced
        self.rate = RateMeter()

    def check(self, envelope: Envelope, active_streams: int, now: float, address: str) -> None:
        difficulty = self.policy.difficulty(active_streams, self.rate.rate(now), self.forced)
        if difficulty == 0:
            return
        if envelope.pow is not None:
            # A challenge issued when the load was lower is still good, but only one step lower.
            minimum = max(1, difficulty - self.policy.step)
            try:
                self.challenges.verify(envelope.pow[0], envelope.pow[1], envelope.request_id, now, address, minimum)
                return
            except PowError:
                pass
        raise RequestRejected(POW_REQUIRED, body=self.challenges.issue(difficulty, now, address))


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
        address_streams: CountPerKey | None = None,
    ) -> None:
        self.ring = ring
        self.replay = replay
        self.per_address = per_address
        self.max_body = max_body
        self.per_device = per_device
        self.slots = slots
        self.pow_gate = pow_gate
        self.address_streams = address_streams

    def admit(self, body: bytes, address: str, now: float, backend_ready: bool) -> Admitted:
        """Return the opened request (perhaps with a sealed refusal), or raise RequestRejected
        with the plaintext error to send. Unless refused, the address holds one stream until
        `release`."""
        wait = self.per_address.check(address, now)
        if wait:
            raise RequestRejected(RATE_LIMITED, retry_after=wait)
        if self.pow_gate is not None:  # load as requests that passed their address's limit
            self.pow_gate.rate.add(now)
        if not backend_ready or (self.slots is not None and self.slots.full()):
            raise RequestRejected(UNAVAILABLE)
        streams = self.address_streams
        if streams is not None and streams.held(address) >= streams.limit:
            raise RequestRejected(RATE_LIMITED, retry_after=ADDRESS_STREAMS_RETRY)
        envelope = parse_envelope(body, max_ciphertext=self.max_body)
        if self.pow_gate is not None:
            self.pow_gate.check(envelope, self.slots.active if self.slots else 0, now, address)
        seconds = int(now)
        self.replay.check_fresh(envelope.timestamp, seconds)
        key = self.ring.accepting(envelope.key_id, seconds)
        if key is None:
            raise RequestRejected(UNKNOWN_KEY)
        self.replay.check_unseen(envelope.request_id, envelope.encapsulated_key, seconds)
        self.replay.check_room(address, seconds)
        opened = open_request(envelope, key.secret)
        # From here on the request has opened: it is remembered whatever follows, so it
        # cannot be replayed, and a refusal is sealed.
        self.replay.remember(envelope.request_id, envelope.encapsulated_key, envelope.timestamp, seconds, address)
        refusal = self._per_device(envelope.device_pubkey, now)
        if refusal is None and streams is not None:
            streams.acquire(address)
        return Admitted(envelope, opened, address, refusal)

    def release(self, admitted: Admitted) -> None:
        """The admitted request's stream ended: give back its address's stream."""
        if admitted.refusal is None and self.address_streams is not None:
            self.address_streams.release(admitted.address)

    def _per_device(self, device: bytes, now: float) -> SealedRefusal | None:
        if self.per_device is None:
            return None
        wait = self.per_device.check(device, now)
        if not wait:
            return None
        return SealedRefusal("rate_limited", "too many requests from this device", retry_after=wait)
