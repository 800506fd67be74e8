"""
Protocol v2's key configurations (`GET /api/ohttp-keys`) and the router's keys that open requests.

The body is `application/ohttp-keys` (RFC 9458 section 3.2) exactly: one KeyConfig per key the
ring publishes (current, then next), with v1's key ids. That format carries no signature, so
the router signs it with the identity key the app pins (v1's key set signer), over

    "privllm/v2 ohttp-keys" || 0x00 || u64be(issued) || u64be(expires) || body

and sends issued, expires, its public key and the signature as response headers. Freshness is
v1's client rule (keyset.KeySet.check_fresh).

`GatewayKeys` holds one GatewayKey per ring key, built from the ring key's own private key
object (no copy), rebuilt when the ring changes and dropped with it.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..encoding import EncodingError, b64decode, b64encode
from ..keyring import KeyRing, RingKey
from ..keyset import MAX_KEYSET_LIFETIME, MAX_TIME, KeySetError, check_fresh
from ..ohttp.errors import OhttpError
from ..ohttp.keyconfig import KeyConfig, encode_key_configs, parse_key_configs
from ..ohttp.message import GatewayKey
from ..ohttp.suites import AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305, KDF_HKDF_SHA256, KEM_X25519, SymmetricSuite
from ..suite import ED25519_KEY_SIZE, ED25519_SIGNATURE_SIZE

__all__ = [
    "CONTENT_TYPE",
    "HEADERS",
    "SIGNATURE_LABEL",
    "SUITES",
    "GatewayKeys",
    "SignedKeyConfigs",
    "VerifiedKeyConfigs",
    "key_config",
    "sign_key_configs",
    "verify_key_configs",
]

CONTENT_TYPE = b"application/ohttp-keys"
SIGNATURE_LABEL = b"privllm/v2 ohttp-keys\x00"
SUITES = (
    SymmetricSuite(KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305),
    SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM),
)
# the response headers, in the order `SignedKeyConfigs.headers` gives them
HEADERS = (b"privllm-keys-signing-key", b"privllm-keys-issued", b"privllm-keys-expires", b"privllm-keys-signature")
_TIMES = struct.Struct(">QQ")


def key_config(key_id: int, public_key: bytes) -> KeyConfig:
    return KeyConfig(key_id, KEM_X25519, public_key, SUITES)


def _signed_message(issued: int, expires: int, body: bytes) -> bytes:
    return SIGNATURE_LABEL + _TIMES.pack(issued, expires) + body


@dataclass(frozen=True)
class SignedKeyConfigs:
    body: bytes
    issued: int
    expires: int
    signing_key: bytes
    signature: bytes

    def headers(self) -> list[tuple[bytes, bytes]]:
        values = (b64encode(self.signing_key), str(self.issued), str(self.expires), b64encode(self.signature))
        return [(name, value.encode("ascii")) for name, value in zip(HEADERS, values, strict=True)]


def sign_key_configs(
    configs: list[KeyConfig], issued: int, expires: int, identity: Ed25519PrivateKey
) -> SignedKeyConfigs:
    body = encode_key_configs(configs)
    signature = identity.sign(_signed_message(issued, expires, body))
    return SignedKeyConfigs(body, issued, expires, identity.public_key().public_bytes_raw(), signature)


def _time(value: bytes | None, low: int, high: int) -> int:
    if value is None or not value.isdigit() or len(value) > 16:
        raise KeySetError("malformed key configurations")
    number = int(value)
    if str(number).encode() != value or not low <= number <= high:  # one spelling: no leading zeros
        raise KeySetError("malformed key configurations")
    return number


@dataclass(frozen=True)
class VerifiedKeyConfigs:
    """What a client holds: the configurations, and the signed times that say how long."""

    configs: tuple[KeyConfig, ...]
    issued: int
    expires: int

    def check_fresh(self, now: int) -> None:
        check_fresh(self.issued, self.expires, now)


def verify_key_configs(
    body: bytes, headers: dict[bytes, bytes], pinned_identity: bytes, now: int
) -> VerifiedKeyConfigs:
    """The client's check: the signing key is the pinned one, the signature holds, the set is
    fresh at `now`; `headers` by lower-case name. Raises KeySetError (StaleKeySet when a good
    signature covers an old or future set)."""
    try:
        signing_key = b64decode(_ascii(headers.get(HEADERS[0])), ED25519_KEY_SIZE)
        signature = b64decode(_ascii(headers.get(HEADERS[3])), ED25519_SIGNATURE_SIZE)
    except EncodingError as e:
        raise KeySetError("malformed key configurations") from e
    if not hmac.compare_digest(signing_key, pinned_identity):
        raise KeySetError("signed by a key other than the pinned identity")
    issued = _time(headers.get(HEADERS[1]), 0, MAX_TIME)
    expires = _time(headers.get(HEADERS[2]), issued + 1, issued + MAX_KEYSET_LIFETIME)
    try:
        Ed25519PublicKey.from_public_bytes(pinned_identity).verify(signature, _signed_message(issued, expires, body))
    except InvalidSignature as e:
        raise KeySetError("bad signature") from e
    try:
        configs = parse_key_configs(body)
    except OhttpError as e:
        raise KeySetError("malformed key configurations") from e
    verified = VerifiedKeyConfigs(configs, issued, expires)
    verified.check_fresh(now)
    return verified


def _ascii(value: bytes | None) -> str | None:
    return value.decode("ascii", "replace") if value is not None else None


class GatewayKeys:
    """The ring's keys as Oblivious HTTP gateway keys, for decapsulation. Rebuilt whenever the
    ring's keys are other objects than last time (a refresh, a rotation, a wipe), so a key the
    ring dropped is dropped here at the next look."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._seen: list[RingKey] = []
        self._keys: dict[int, tuple[RingKey, GatewayKey]] = {}

    def accepting(self, key_id: int, now: int) -> dict[int, GatewayKey]:
        """{key_id: its gateway key} when the ring accepts `key_id` now, else {}."""
        ring_key = self._ring.accepting(key_id, now)
        if ring_key is None:
            return {}
        self._refresh()
        return {key_id: self._keys[key_id][1]}

    def _refresh(self) -> None:
        keys = self._ring.keys
        if len(keys) == len(self._seen) and all(a is b for a, b in zip(keys, self._seen, strict=True)):
            return
        self._keys = {k.key_id: (k, GatewayKey(key_config(k.key_id, k.public_key), k.secret)) for k in keys}
        self._seen = keys

    def clear(self) -> None:
        self._keys, self._seen = {}, []
