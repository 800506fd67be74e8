"""
Admission of a protocol v2 request, sans-IO: v1's steps (privllm.protocol.admission) with the
Oblivious HTTP request in place of v1's envelope.

1. `prepare`: the backend's readiness, then `peek` (size, header, `enc`) and the key id (a key
   the ring accepts now, else 422 unknown_key), then proof of work bound to `enc` from the
   `Privllm-Pow` header. Never raises: a failure is the returned Ask's refusal.
2. the state's `screen`, unchanged: address rate, stream caps, replay (enc seen), room, pow spent.
3. `open`: decryption and the device proof; then `fresh` checks the inner timestamp.

The state backends key the replay window on a request id and an encapsulated key. A v2 request
has no request id, so its id is derived from `enc` (`request_id`): "v2." and enc's base64url,
a text v1's request ids (base64url only, no ".") can never be. Before decryption the inner
timestamp is unknown, so the screen's Ask carries the router's own second (a restarted Redis's
floor is then checked again with the real timestamp at commit).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..admission import Admission, Ask, Lease, Load, SealedRefusal
from ..errors import DECRYPT_FAILED, MALFORMED, TOO_LARGE, UNAVAILABLE, UNKNOWN_KEY, RequestRejected
from ..ohttp.errors import OhttpError
from ..ohttp.message import GatewayKey
from ..replay import check_fresh
from .request import OpenedV2, open_chat_request, peek

__all__ = [
    "POW_HEADER",
    "AdmissionV2",
    "AdmittedV2",
    "GatewayKeysFor",
    "PreparedV2",
    "parse_pow_header",
    "rejection_of",
    "request_id",
]

POW_HEADER = b"privllm-pow"
_MAX_POW_HEADER = 256  # a 40-byte challenge and a nonce of at most 64 bytes, in base64: under 150
_REJECTIONS = {r.code: r for r in (MALFORMED, TOO_LARGE, UNKNOWN_KEY, DECRYPT_FAILED)}

GatewayKeysFor = Callable[[int, int], dict[int, GatewayKey]]  # (key id, now) -> {key id: key} or {}


def request_id(enc: bytes) -> str:
    return "v2." + base64.urlsafe_b64encode(enc).rstrip(b"=").decode("ascii")


def rejection_of(error: OhttpError) -> RequestRejected:
    """The plaintext refusal for an Oblivious HTTP error: its wire code, else malformed."""
    return RequestRejected(_REJECTIONS.get(error.code, MALFORMED))


def parse_pow_header(values: Sequence[bytes] | None) -> tuple[str, str] | None:
    """`<b64 challenge>.<b64 nonce>` as (challenge, nonce) text for the pow gate, which checks
    the base64; None when absent or not of that shape (the request is then asked for work)."""
    if not values or len(values) != 1 or len(values[0]) > _MAX_POW_HEADER:
        return None
    challenge, dot, nonce = values[0].partition(b".")
    if not dot or not challenge.isascii() or not nonce.isascii():
        return None
    return challenge.decode("ascii"), nonce.decode("ascii")


@dataclass(frozen=True)
class PreparedV2:
    """A request that passed the stateless checks: its body and the one key that may open it."""

    body: bytes
    keys: dict[int, GatewayKey]


@dataclass(frozen=True)
class AdmittedV2:
    """An opened request. `stale`: its timestamp is outside the window; it is answered with
    the inner 401 and nothing is held. Else as v1's Admitted: a sealed refusal, or a lease."""

    opened: OpenedV2
    address: str
    stale: bool = False
    refusal: SealedRefusal | None = None
    lease: Lease | None = None


class AdmissionV2:
    def __init__(self, admission: Admission, keys: GatewayKeysFor) -> None:
        self.admission = admission  # v1's: limits, window and pow gate are shared
        self._keys = keys

    def prepare(
        self,
        body: bytes,
        pow_header: Sequence[bytes] | None,
        address: str,
        now: float,
        backend_ready: bool,
        load: Load,
        relay: bool = False,
    ) -> tuple[Ask, PreparedV2 | None]:
        """`relay`: the peer is an Oblivious HTTP relay, held to the relay's budget."""
        try:
            return self._prepare(body, pow_header, address, now, backend_ready, load, relay)
        except RequestRejected as e:
            return Ask(address, now, refusal=e, relay=relay), None

    def _prepare(
        self,
        body: bytes,
        pow_header: Sequence[bytes] | None,
        address: str,
        now: float,
        backend_ready: bool,
        load: Load,
        relay: bool,
    ) -> tuple[Ask, PreparedV2]:
        if not backend_ready:
            raise RequestRejected(UNAVAILABLE, reason="no_node")
        try:
            peeked = peek(body, self.admission.max_body)
        except OhttpError as e:
            raise rejection_of(e) from None
        seconds = int(now)
        keys = self._keys(peeked.key_id, seconds)
        if not keys:
            raise RequestRejected(UNKNOWN_KEY)
        solved = None
        gate = self.admission.pow_gate
        if gate is not None:
            solved = gate.check_work(parse_pow_header(pow_header), peeked.enc, load, now, address)
        token, expires = solved if solved is not None else (None, 0)
        ask = Ask(
            address,
            now,
            request_id=request_id(peeked.enc),
            encapsulated_key=peeked.enc,
            timestamp=seconds,
            pow_token=token,
            pow_expires=expires,
            relay=relay,
        )
        return ask, PreparedV2(body, keys)

    def open(self, prepared: PreparedV2) -> OpenedV2:
        """Decrypt and check; raises RequestRejected with the wire code (400 decrypt_failed...)."""
        try:
            return open_chat_request(prepared.keys, prepared.body, self.admission.max_body)
        except OhttpError as e:
            raise rejection_of(e) from None

    def fresh(self, timestamp: int, now: float) -> bool:
        try:
            check_fresh(timestamp, int(now), self.admission.window, self.admission.future_skew)
        except RequestRejected:
            return False
        return True
