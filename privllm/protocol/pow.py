"""
Proof of work under stress, sans-IO: stateless challenges and a difficulty that rises with load.

A challenge is `version || difficulty || expires || random || MAC`, with MAC =
HMAC(secret, those || client address key)[:16]: any router process holding the secret can
check it without having stored it, and a challenge issued to one address (IPv6: prefix) is
worthless from another. The client finds `nonce` such that
SHA-256(challenge || bound || nonce) starts with at least `difficulty` zero bits, `bound`
being what the work is for: v1's request id (its UTF-8 bytes), v2's encapsulated key `enc`.

A challenge admits one request: `verify` returns its random part and expiry, which the
admission state (privllm.state, shared by every router process) marks spent before
decryption, so forged requests cannot reuse it either, and remembers until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from collections.abc import Callable

from .encoding import EncodingError, b64decode, b64encode
from .errors import ProtocolError

__all__ = [
    "CHALLENGE_SIZE",
    "MAC_SIZE",
    "MAX_NONCE",
    "VERSION",
    "Challenges",
    "DifficultyPolicy",
    "PowError",
    "RateMeter",
    "leading_zero_bits",
    "solve",
    "work_hash",
]

VERSION = 2  # 2: the MAC covers the client's address key
_HEAD = struct.Struct(">BBQ16s")  # version, difficulty, expires, random
MAC_SIZE = 16
CHALLENGE_SIZE = _HEAD.size + MAC_SIZE
MAX_NONCE = 64


class PowError(ProtocolError):
    """The solution is missing, malformed, forged, expired or too weak."""

    code = "pow_required"


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte:
            return bits + 8 - byte.bit_length()
        bits += 8
    return bits


def work_hash(challenge: bytes, bound: str | bytes, nonce: bytes) -> bytes:
    """`bound`: v1's request id (text, hashed as UTF-8) or v2's `enc` (bytes)."""
    data = bound.encode() if isinstance(bound, str) else bound
    return hashlib.sha256(challenge + data + nonce).digest()


class Challenges:
    def __init__(self, secret: bytes, ttl: int) -> None:
        if len(secret) < 32 or ttl < 1:
            raise ValueError("a 32-byte secret and a positive ttl are required")
        self._secret = secret
        self.ttl = ttl

    def _mac(self, head: bytes, address: str) -> bytes:
        # The head has a fixed size, so head || address is unambiguous.
        return hmac.new(self._secret, head + address.encode(), hashlib.sha256).digest()[:MAC_SIZE]

    def issue(self, difficulty: int, now: float, address: str, token: bytes | None = None) -> dict[str, object]:
        """`token` (16 bytes) is for reproducible vectors only; leave it None so a fresh one is drawn."""
        if token is not None and len(token) != 16:
            raise ValueError("a challenge's random part is 16 bytes")
        expires = int(now) + self.ttl
        head = _HEAD.pack(VERSION, difficulty, expires, os.urandom(16) if token is None else token)
        return {
            "error": "pow_required",
            "challenge": b64encode(head + self._mac(head, address)),
            "difficulty": difficulty,
            "expires": expires,
        }

    def verify(
        self, challenge_b64: object, nonce_b64: object, bound: str | bytes, now: float, address: str, minimum: int = 0
    ) -> tuple[bytes, int]:
        """Check a solution: its challenge must ask `minimum` bits at least. Return the
        challenge's random token and expiry, for the caller to spend once; raise PowError."""
        try:
            challenge = b64decode(challenge_b64, CHALLENGE_SIZE)
            nonce = b64decode(nonce_b64, max_length=MAX_NONCE)
        except EncodingError as e:
            raise PowError("malformed") from e
        head, mac = challenge[: _HEAD.size], challenge[_HEAD.size :]
        if not hmac.compare_digest(mac, self._mac(head, address)):
            raise PowError("not ours, or issued to another address")
        version, difficulty, expires, token = _HEAD.unpack(head)
        if version != VERSION or now > expires:
            raise PowError("expired")
        if difficulty < minimum:
            raise PowError("issued when the load was lower")
        if leading_zero_bits(work_hash(challenge, bound, nonce)) < difficulty:
            raise PowError("too weak")
        return token, expires


def solve(
    challenge: bytes,
    bound: str | bytes,
    difficulty: int,
    progress: Callable[[int], None] | None = None,
    limit: int = 1 << 32,
) -> bytes:
    """The client's side: try nonces 0, 1, 2, ... (8 bytes each) until one is good enough."""
    for counter in range(limit):
        nonce = counter.to_bytes(8, "big")
        if leading_zero_bits(work_hash(challenge, bound, nonce)) >= difficulty:
            return nonce
        if progress is not None and counter % 65536 == 65535:
            progress(counter + 1)
    raise PowError("no solution within the limit")


class DifficultyPolicy:
    """0 (no proof of work) below the threshold; above it, `base` bits, plus `step` bits each
    time the load doubles, up to `maximum`. Load is the larger of the two ratios."""

    def __init__(self, stream_threshold: int, rate_threshold: float, base: int, step: int, maximum: int) -> None:
        self.stream_threshold = stream_threshold
        self.rate_threshold = rate_threshold
        self.base, self.step, self.maximum = base, step, maximum

    def difficulty(self, active_streams: int, request_rate: float, forced: bool = False) -> int:
        load = max(active_streams / self.stream_threshold, request_rate / self.rate_threshold)
        if load < 1.0 and not forced:
            return 0
        return min(self.maximum, self.base + int(self.step * math.log2(max(load, 1.0))))


class RateMeter:
    """Requests per second over a sliding window of whole seconds: O(1) per request."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._counts = [0] * window
        self._seconds = [0] * window

    def add(self, now: float) -> None:
        second = int(now)
        slot = second % self.window
        if self._seconds[slot] != second:
            self._seconds[slot], self._counts[slot] = second, 0
        self._counts[slot] += 1

    def rate(self, now: float) -> float:
        second = int(now)
        total = sum(c for c, s in zip(self._counts, self._seconds, strict=True) if second - s < self.window)
        return total / self.window
