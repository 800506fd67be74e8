"""Parse the outer JSON envelope of `POST /api/chat` with an allow-list, before any crypto."""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import suite
from .encoding import EncodingError, b64decode, loads_bounded
from .errors import MALFORMED, RequestRejected

__all__ = [
    "FIELDS",
    "MAX_DEPTH",
    "MAX_FIELDS_BYTES",
    "MAX_TIMESTAMP",
    "OPTIONAL",
    "REQUEST_ID",
    "Envelope",
    "parse_envelope",
]

REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{22,64}")
FIELDS = frozenset({"v", "key_id", "encapsulated_key", "device_pubkey", "timestamp", "request_id", "aad", "ciphertext"})
OPTIONAL = frozenset({"pow"})  # proof of work, sent only when the router asked for it
MAX_TIMESTAMP = 2**40
MAX_DEPTH = 2  # the envelope, and its proof of work
MAX_FIELDS_BYTES = 4096  # everything but the ciphertext's base64


@dataclass(frozen=True)
class Envelope:
    key_id: int
    encapsulated_key: bytes
    device_pubkey: bytes
    timestamp: int
    request_id: str
    aad: bytes
    ciphertext: bytes
    pow: tuple[str, str] | None = None  # (challenge, nonce), both base64, checked by the pow gate


def _integer(value: object, low: int, high: int) -> int:
    # bool is an int in Python; the protocol does not accept true for 1.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestRejected(MALFORMED)
    return value


def parse_envelope(body: bytes, max_ciphertext: int) -> Envelope:
    """Return the checked envelope, or raise RequestRejected(MALFORMED)."""
    try:
        obj = loads_bounded(body, 2 * max_ciphertext + MAX_FIELDS_BYTES, MAX_DEPTH)
    except EncodingError as e:
        raise RequestRejected(MALFORMED) from e
    if not isinstance(obj, dict):
        raise RequestRejected(MALFORMED)
    if not FIELDS <= set(obj) <= FIELDS | OPTIONAL:
        raise RequestRejected(MALFORMED)
    pow_ = obj.get("pow")
    if pow_ is not None and not (
        isinstance(pow_, dict)
        and set(pow_) == {"challenge", "nonce"}
        and all(isinstance(v, str) and len(v) <= 128 for v in pow_.values())
    ):
        raise RequestRejected(MALFORMED)
    if _integer(obj["v"], 0, 2**31) != suite.VERSION:
        raise RequestRejected(MALFORMED)
    request_id = obj["request_id"]
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise RequestRejected(MALFORMED)
    try:
        return Envelope(
            key_id=_integer(obj["key_id"], 0, 255),
            encapsulated_key=b64decode(obj["encapsulated_key"], suite.X25519_KEY_SIZE),
            device_pubkey=b64decode(obj["device_pubkey"], suite.X25519_KEY_SIZE),
            timestamp=_integer(obj["timestamp"], 0, MAX_TIMESTAMP),
            request_id=request_id,
            aad=b64decode(obj["aad"], max_length=256),
            ciphertext=b64decode(obj["ciphertext"], max_length=max_ciphertext),
            pow=(pow_["challenge"], pow_["nonce"]) if pow_ is not None else None,
        )
    except EncodingError as e:
        raise RequestRejected(MALFORMED) from e
