"""
Protocol v2's key configurations, signed: `application/ohttp-keys` (RFC 9458 section 3.2)
has no room for a signature, so four response headers carry it:

    Privllm-Keys-Signing-Key: b64(Ed25519 public key)   the identity key the app pins
    Privllm-Keys-Issued: <unix seconds>
    Privllm-Keys-Expires: <unix seconds>
    Privllm-Keys-Signature: b64(Ed25519 over "privllm/v2 ohttp-keys" || 0x00 || u64be(issued)
                                || u64be(expires) || body)

The router signs (`sign_key_configs`); the client checks the signing key against its pin
(constant time), then the signature, then the lifetime and v1's freshness rule
(`verify_key_configs`). Header values are parsed strictly: one canonical base64 or decimal
spelling each, so a repeated header (joined with commas, as HTTP combines fields) is refused.
Errors are v1's key set errors, so a client handles both versions alike.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .. import suite
from ..encoding import EncodingError, b64decode, b64encode
from ..keyset import MAX_KEYSET_LIFETIME, MAX_TIME, KeySetError, check_freshness
from ..ohttp.errors import OhttpError
from ..ohttp.keyconfig import KeyConfig, parse_key_configs

__all__ = [
    "CONTENT_TYPE",
    "EXPIRES",
    "ISSUED",
    "MAX_KEY_CONFIGS_BYTES",
    "SIGNATURE",
    "SIGNATURE_LABEL",
    "SIGNING_KEY",
    "SignedKeyConfigs",
    "sign_key_configs",
    "signed_message",
    "verify_key_configs",
]

CONTENT_TYPE = b"application/ohttp-keys"
SIGNATURE_LABEL = b"privllm/v2 ohttp-keys\x00"
SIGNING_KEY = b"Privllm-Keys-Signing-Key"
ISSUED = b"Privllm-Keys-Issued"
EXPIRES = b"Privllm-Keys-Expires"
SIGNATURE = b"Privllm-Keys-Signature"
MAX_KEY_CONFIGS_BYTES = 4096  # 16 configurations of 16 suites would be 1,680 bytes; the router sends about 90 each
_SECONDS = re.compile(rb"0|[1-9][0-9]{0,15}")


def signed_message(body: bytes, issued: int, expires: int) -> bytes:
    return SIGNATURE_LABEL + issued.to_bytes(8, "big") + expires.to_bytes(8, "big") + body


def sign_key_configs(identity: Ed25519PrivateKey, body: bytes, issued: int, expires: int) -> dict[bytes, bytes]:
    """The router's side: the four headers that go with `body` (encode_key_configs' output)."""
    if not 0 <= issued < expires <= MAX_TIME:
        raise ValueError("issued and expires must be unix seconds, issued first")
    return {
        SIGNING_KEY: b64encode(identity.public_key().public_bytes_raw()).encode("ascii"),
        ISSUED: str(issued).encode("ascii"),
        EXPIRES: str(expires).encode("ascii"),
        SIGNATURE: b64encode(identity.sign(signed_message(body, issued, expires))).encode("ascii"),
    }


@dataclass(frozen=True)
class SignedKeyConfigs:
    """Verified configurations, in the router's order, and the window the signature gives them."""

    configs: tuple[KeyConfig, ...]
    issued: int
    expires: int

    def check_fresh(self, now: int) -> None:
        check_freshness(self.issued, self.expires, now)


def verify_key_configs(headers: Mapping[bytes, bytes], body: bytes, pin: bytes, now: int) -> SignedKeyConfigs:
    """The client's side. `headers`: the response's, names in any case. Raises KeySetError
    (StaleKeySet when a good signature covers configurations not valid at `now`)."""
    fields = {name.lower(): value for name, value in headers.items()}
    if len(body) > MAX_KEY_CONFIGS_BYTES:
        raise KeySetError("key configurations too large")
    signing_key = _base64(fields, SIGNING_KEY, suite.ED25519_KEY_SIZE)
    if not hmac.compare_digest(signing_key, pin):
        raise KeySetError("signed by a key other than the pinned identity")
    issued, expires = _seconds(fields, ISSUED), _seconds(fields, EXPIRES)
    signature = _base64(fields, SIGNATURE, suite.ED25519_SIGNATURE_SIZE)
    try:
        Ed25519PublicKey.from_public_bytes(pin).verify(signature, signed_message(body, issued, expires))
    except InvalidSignature as e:
        raise KeySetError("bad signature") from e
    if not issued < expires <= issued + MAX_KEYSET_LIFETIME:
        raise KeySetError("key configurations with a bad lifetime")
    try:
        configs = parse_key_configs(body)
    except OhttpError as e:
        raise KeySetError("malformed key configurations") from e
    signed = SignedKeyConfigs(configs, issued, expires)
    signed.check_fresh(now)
    return signed


def _field(fields: Mapping[bytes, bytes], name: bytes) -> bytes:
    value = fields.get(name.lower())
    if value is None:
        raise KeySetError("a signature header is missing")
    return value


def _base64(fields: Mapping[bytes, bytes], name: bytes, length: int) -> bytes:
    try:
        return b64decode(_field(fields, name).decode("ascii"), length)
    except (UnicodeDecodeError, EncodingError) as e:
        raise KeySetError("a malformed signature header") from e


def _seconds(fields: Mapping[bytes, bytes], name: bytes) -> int:
    value = _field(fields, name)
    if not _SECONDS.fullmatch(value) or int(value) > MAX_TIME:
        raise KeySetError("a malformed signature header")
    return int(value)
