"""
Admission of a chat request, sans-IO: the checks that need no shared state, and the request's
questions for the state that router processes share (privllm.state).

A request goes through three steps, in order:
1. `prepare` (here): the backend's readiness, the envelope's shape, proof of work under stress
   (the challenge's MAC, expiry, difficulty and work), freshness and the key. It never raises:
   a failure is carried in the returned `Ask`, so the state still counts the request against
   its address before the refusal is sent.
2. the state's `screen`: the address's rate limit, the global and per-address stream caps, the
   proof of work spent once, the replay window (seen, and room). Still before decryption, so a
   flood costs little.
3. `open` (here): decryption. Then the state's `commit` remembers the request in the replay
   window whatever follows, counts the device (only a request that opened has proven its
   device key, so nobody can spend someone else's quota) and leases a stream. Any refusal
   after decryption is a `SealedRefusal`, sent inside the encrypted stream.

`address` is the client's address key (privllm.protocol.addresses): an IPv4 address or an
IPv6 prefix, never raw text from the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyhpke import KEMKeyInterface

from .envelope import Envelope, parse_envelope
from .errors import POW_REQUIRED, UNAVAILABLE, UNKNOWN_KEY, RequestRejected, refusal_reason
from .keyring import KeyRing
from .pow import Challenges, DifficultyPolicy, PowError
from .replay import check_fresh
from .request import OpenedRequest, open_request

__all__ = ["Admission", "Admitted", "Ask", "Lease", "Load", "PowGate", "Prepared", "SealedRefusal"]


@dataclass(frozen=True)
class SealedRefusal:
    """A refusal decided after decryption: the stream's sealed final `error` chunk."""

    code: str  # one of life.ERROR_CODES
    message: str  # names no value from the request
    retry_after: int | None = None  # whole seconds, sent as "retry_after" when set
    reason: str | None = None  # the control that refused (errors.REFUSAL_REASONS), for the metric

    def __post_init__(self) -> None:
        refusal_reason(self.reason)


@dataclass(frozen=True)
class Ask:
    """One request, as the shared state sees it. `address` is an address key; a backend that
    stores anything stores only keyed hashes of these values."""

    address: str
    now: float
    refusal: RequestRejected | None = None  # a stateless check failed: counted, then refused with this
    request_id: str = ""
    encapsulated_key: bytes = b""
    timestamp: int = 0  # the request's own, already checked fresh
    pow_token: bytes | None = None  # a verified challenge's random part: spent once
    pow_expires: int = 0
    relay: bool = False  # from an Oblivious HTTP relay: held to the relay's per-address budget


@dataclass(frozen=True)
class Load:
    """What sets the proof-of-work difficulty: streams being answered, chat requests per second."""

    active_streams: int
    rate: float


@dataclass(frozen=True)
class Lease:
    """One admitted stream's hold on the stream caps; `token` names it in the state (random)."""

    token: bytes
    address: str
    device: bytes


@dataclass(frozen=True)
class Prepared:
    """A request that passed the stateless checks, waiting for the state and decryption."""

    envelope: Envelope
    secret: KEMKeyInterface  # the accepting key's private key


@dataclass(frozen=True)
class Admitted:
    envelope: Envelope
    opened: OpenedRequest
    address: str
    refusal: SealedRefusal | None = None  # set: end at once with it; nothing was taken
    lease: Lease | None = None  # held until the stream ends (None when refused)


class PowGate:
    """Asks for proof of work when the load crosses the policy's threshold (or when forced)."""

    def __init__(self, challenges: Challenges, policy: DifficultyPolicy, forced: bool = False) -> None:
        self.challenges = challenges
        self.policy = policy
        self.forced = forced

    def difficulty(self, load: Load) -> int:
        return self.policy.difficulty(load.active_streams, load.rate, self.forced)

    def check(self, envelope: Envelope, load: Load, now: float, address: str) -> tuple[bytes, int] | None:
        """v1: the work is bound to the request id."""
        return self.check_work(envelope.pow, envelope.request_id, load, now, address)

    def check_work(
        self, solution: tuple[object, object] | None, bound: str | bytes, load: Load, now: float, address: str
    ) -> tuple[bytes, int] | None:
        """None when no work is asked, else the solved challenge's (token, expires) to spend.
        `solution` is (challenge, nonce) as sent (base64 text), `bound` what the work is for.
        Raises RequestRejected(POW_REQUIRED) with a new challenge."""
        difficulty = self.difficulty(load)
        if difficulty == 0:
            return None
        if solution is not None:
            # A challenge issued when the load was lower is still good, but only one step lower.
            minimum = max(1, difficulty - self.policy.step)
            try:
                return self.challenges.verify(solution[0], solution[1], bound, now, address, minimum)
            except PowError:
                pass
        raise self.required(load, now, address)

    def required(self, load: Load, now: float, address: str) -> RequestRejected:
        difficulty = max(1, self.difficulty(load))
        return RequestRejected(
            POW_REQUIRED, body=self.challenges.issue(difficulty, now, address), reason="pow_required"
        )


class Admission:
    def __init__(
        self,
        ring: KeyRing,
        max_body: int,
        window: int,
        future_skew: int,
        pow_gate: PowGate | None = None,
    ) -> None:
        if window < 2 or not 0 <= future_skew <= window:
            raise ValueError("the replay window must be at least 2 s, future_skew within 0..window")
        self.ring = ring
        self.max_body = max_body
        self.window = window
        self.future_skew = future_skew
        self.pow_gate = pow_gate

    def prepare(
        self, body: bytes, address: str, now: float, backend_ready: bool, load: Load, relay: bool = False
    ) -> tuple[Ask, Prepared | None]:
        """The stateless checks; a failure is the returned Ask's refusal (and no Prepared).
        `relay`: the peer is an Oblivious HTTP relay (its ask, refused or not, counts against the
        relay's budget)."""
        try:
            return self._prepare(body, address, now, backend_ready, load, relay)
        except RequestRejected as e:
            return Ask(address, now, refusal=e, relay=relay), None

    def _prepare(
        self, body: bytes, address: str, now: float, backend_ready: bool, load: Load, relay: bool
    ) -> tuple[Ask, Prepared]:
        if not backend_ready:
            raise RequestRejected(UNAVAILABLE, reason="no_node")
        envelope = parse_envelope(body, max_ciphertext=self.max_body)
        solved = None
        if self.pow_gate is not None:
            solved = self.pow_gate.check(envelope, load, now, address)
        seconds = int(now)
        check_fresh(envelope.timestamp, seconds, self.window, self.future_skew)
        key = self.ring.accepting(envelope.key_id, seconds)
        if key is None:
            raise RequestRejected(UNKNOWN_KEY)
        token, expires = solved if solved is not None else (None, 0)
        ask = Ask(
            address,
            now,
            request_id=envelope.request_id,
            encapsulated_key=envelope.encapsulated_key,
            timestamp=envelope.timestamp,
            pow_token=token,
            pow_expires=expires,
            relay=relay,
        )
        return ask, Prepared(envelope, key.secret)

    def open(self, prepared: Prepared) -> OpenedRequest:
        """Decrypt; raises RequestRejected(DECRYPT_FAILED) for a forged or damaged request."""
        return open_request(prepared.envelope, prepared.secret)
