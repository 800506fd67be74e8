"""
The router's published HPKE key set, signed by its long-lived Ed25519 identity key.

The set carries its own freshness (`issued_at`, `expires`, signed with the rest): a client
refuses a set that is not valid at its clock, so a set signed before `privllm-admin rotate
--revoke` stops being usable within one key set lifetime, whoever replays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import suite
from .encoding import EncodingError, b64decode, b64encode, canonical_json, loads_bounded
from .errors import ProtocolError

__all__ = [
    "KEYSET_CLOCK_SKEW",
    "KEY_MEMBERS",
    "MAX_KEYS",
    "MAX_KEYSET_BYTES",
    "MAX_KEYSET_LIFETIME",
    "MAX_TIME",
    "MEMBERS",
    "KeySet",
    "KeySetError",
    "PublishedKey",
    "StaleKeySet",
    "check_fresh",
    "choose_key",
    "keyset_document",
    "verify_keyset",
]

KEYSET_CLOCK_SKEW = 60  # seconds either way; the request timestamp window needs as good a clock
MAX_KEYSET_LIFETIME = 86400  # a client refuses a set that claims to stay valid longer
MAX_KEYSET_BYTES = 16384  # a set holds two or three keys: about 600 bytes
MAX_KEYS = 8
MAX_TIME = 2**53 - 1  # integers every JSON reader holds exactly
KEY_MEMBERS = frozenset({"key_id", "public_key", "not_before", "not_after", "status"})
MEMBERS = frozenset({"v", "kem_id", "kdf_id", "aead_id", "keys", "issued_at", "expires", "signing_key", "signature"})


@dataclass(frozen=True)
class PublishedKey:
    key_id: int
    public_key: bytes
    not_before: int
    not_after: int
    status: str  # "current" | "next"


@dataclass(frozen=True)
class KeySet:
    keys: list[PublishedKey]
    issued_at: int
    expires: int

    def check_fresh(self, now: int) -> None:
        check_fresh(self.issued_at, self.expires, now)


def check_fresh(issued_at: int, expires: int, now: int) -> None:
    """The client rule for anything signed with a lifetime (v1's key set, v2's key
    configurations): valid from issued_at to expires, each end widened by the clock skew."""
    if now + KEYSET_CLOCK_SKEW < issued_at:
        raise StaleKeySet("the key set is not valid yet (is this device's clock right?)")
    if now >= expires + KEYSET_CLOCK_SKEW:
        raise StaleKeySet("the key set has expired")


def keyset_document(
    keys: list[PublishedKey], issued_at: int, expires: int, identity: Ed25519PrivateKey
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": suite.VERSION,
        "kem_id": suite.KEM_ID,
        "kdf_id": suite.KDF_ID,
        "aead_id": suite.AEAD_ID,
        "keys": [
            {
                "key_id": k.key_id,
                "public_key": b64encode(k.public_key),
                "not_before": k.not_before,
                "not_after": k.not_after,
                "status": k.status,
            }
            for k in keys
        ],
        "issued_at": issued_at,
        "expires": expires,
        "signing_key": b64encode(identity.public_key().public_bytes_raw()),
    }
    doc["signature"] = b64encode(identity.sign(canonical_json(doc)))
    return doc


class KeySetError(ProtocolError):
    """The key set is malformed, signed by another key, badly signed, or not fresh."""

    code = "bad_keyset"


class StaleKeySet(KeySetError):
    """Well signed but not valid now: a cache or a replayer served an old set; fetch again."""

    code = "stale_keyset"


def _integer(value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise KeySetError("malformed key set")
    return value


def _key(item: object) -> PublishedKey:
    if not isinstance(item, dict) or set(item) != KEY_MEMBERS or item["status"] not in ("current", "next"):
        raise KeySetError("malformed key set")
    key = PublishedKey(
        key_id=_integer(item["key_id"], 0, 255),
        public_key=b64decode(item["public_key"], suite.X25519_KEY_SIZE),
        not_before=_integer(item["not_before"], 0, MAX_TIME),
        not_after=_integer(item["not_after"], 0, MAX_TIME),
        status=item["status"],
    )
    if key.not_after <= key.not_before:
        raise KeySetError("malformed key set")
    return key


def _signed_document(raw: bytes, pinned_identity: bytes) -> dict[str, Any]:
    """The document, once its shape is right and the pinned identity's signature holds."""
    doc = loads_bounded(raw, MAX_KEYSET_BYTES, max_depth=3)
    if not isinstance(doc, dict) or set(doc) != MEMBERS:
        raise KeySetError("malformed key set")
    signature = b64decode(doc.pop("signature"), suite.ED25519_SIGNATURE_SIZE)
    if b64decode(doc["signing_key"], suite.ED25519_KEY_SIZE) != pinned_identity:
        raise KeySetError("signed by a key other than the pinned identity")
    try:
        Ed25519PublicKey.from_public_bytes(pinned_identity).verify(signature, canonical_json(doc))
    except InvalidSignature as e:
        raise KeySetError("bad signature") from e
    return doc


def verify_keyset(raw: bytes, pinned_identity: bytes, now: int) -> KeySet:
    """Check the signature against the pinned identity key, the suite and the freshness at `now`.
    Raises only KeySetError (StaleKeySet when a good signature covers an old or future set)."""
    try:
        doc = _signed_document(raw, pinned_identity)
        if (doc["v"], doc["kem_id"], doc["kdf_id"], doc["aead_id"]) != (
            suite.VERSION,
            suite.KEM_ID,
            suite.KDF_ID,
            suite.AEAD_ID,
        ):
            raise KeySetError("unsupported suite")
        issued_at = _integer(doc["issued_at"], 0, MAX_TIME)
        expires = _integer(doc["expires"], issued_at + 1, issued_at + MAX_KEYSET_LIFETIME)
        keys = doc["keys"]
        if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS:
            raise KeySetError("malformed key set")
        keyset = KeySet([_key(k) for k in keys], issued_at, expires)
    except EncodingError as e:
        raise KeySetError("malformed key set") from e
    keyset.check_fresh(now)
    return keyset


def choose_key(keys: list[PublishedKey], now: int) -> PublishedKey:
    """The client's choice: the current key if its window holds `now`, else any key whose window does."""
    usable = [k for k in keys if k.not_before <= now < k.not_after]
    if not usable:
        raise KeySetError("no key is valid now")
    usable.sort(key=lambda k: (k.status != "current", k.not_before))
    return usable[0]
