"""
Encapsulated Requests and Responses (RFC 9458 section 4), whole messages.

The client seals a request to a key configuration and keeps the HPKE context; the gateway
opens it with the private key the key id names and keeps its own context; each end derives
the response key from its context, the request's `enc` and the response nonce.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from pyhpke import ContextInterface, KEMKeyInterface, KEMKeyPair

from .errors import DecryptFailed, Malformed, TooLarge, UnknownKey
from .keyconfig import KeyConfig
from .suites import (
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    KEM_PUBLIC_KEY_SIZE,
    SymmetricSuite,
    hkdf_expand,
    hkdf_extract,
    hpke_suite,
)
from .wire import Reader

__all__ = [
    "HEADER_SIZE",
    "MAX_MESSAGE",
    "REQUEST_LABEL",
    "RESPONSE_LABEL",
    "Context",
    "GatewayKey",
    "Header",
    "decapsulate_request",
    "decapsulate_response",
    "encapsulate_request",
    "encapsulate_response",
    "open_hpke",
    "parse_header",
    "receiver_context",
    "sender_context",
]

REQUEST_LABEL = b"message/bhttp request"
RESPONSE_LABEL = b"message/bhttp response"
HEADER_SIZE = 7  # key id (1), KEM id (2), KDF id (2), AEAD id (2)
MAX_MESSAGE = 1 << 20  # the default bound on a whole encapsulated message; callers pass theirs


@dataclass(frozen=True)
class Header:
    """The request header: which key, and which algorithms the client chose with it."""

    key_id: int
    kem_id: int
    suite: SymmetricSuite

    def encode(self) -> bytes:
        return (
            self.key_id.to_bytes(1, "big")
            + self.kem_id.to_bytes(2, "big")
            + self.suite.kdf_id.to_bytes(2, "big")
            + self.suite.aead_id.to_bytes(2, "big")
        )

    def info(self, label: bytes) -> bytes:
        """HPKE `info`: the media label, a zero byte, the header (section 4.3)."""
        return label + b"\x00" + self.encode()


@dataclass(frozen=True)
class GatewayKey:
    """A key configuration the gateway publishes and the private key it holds for it."""

    config: KeyConfig
    private_key: KEMKeyInterface

    def __post_init__(self) -> None:
        """A private key that is not the published one's would fail every request: refuse it at load."""
        public = self.private_key.raw.public_key().public_bytes_raw()  # X25519, the one KEM allowed
        if not hmac.compare_digest(public, self.config.public_key):
            raise ValueError("the private key does not match the key configuration")


@dataclass(frozen=True)
class Context:
    """What either end keeps of a request to protect (gateway) or open (client) its response."""

    suite: SymmetricSuite
    enc: bytes
    hpke: ContextInterface

    def response_key(self, label: bytes, response_nonce: bytes) -> tuple[bytes, bytes]:
        """(aead_key, aead_nonce) per section 4.4, under `label`."""
        secret = self.hpke.export(label, self.suite.entropy_size)
        prk = hkdf_extract(self.enc + response_nonce, secret)
        return hkdf_expand(prk, b"key", self.suite.key_size), hkdf_expand(prk, b"nonce", AEAD_NONCE_SIZE)


def sender_context(
    config: KeyConfig, suite: SymmetricSuite, label: bytes, ephemeral: KEMKeyPair | None
) -> tuple[bytes, Context]:
    """(header || enc, context): SetupBaseS to the configuration's key. `ephemeral` is for
    test vectors only; leave it None so a fresh key is drawn."""
    if suite not in config.suites:
        raise ValueError("the key configuration does not offer this suite")
    header = Header(config.key_id, config.kem_id, suite)
    cipher = hpke_suite(config.kem_id, suite)
    enc, ctx = cipher.create_sender_context(
        cipher.kem.deserialize_public_key(config.public_key), info=header.info(label), eks=ephemeral
    )
    return header.encode() + enc, Context(suite, enc, ctx)


def encapsulate_request(
    config: KeyConfig, suite: SymmetricSuite, plaintext: bytes, ephemeral: KEMKeyPair | None = None
) -> tuple[bytes, Context]:
    """Client: the Encapsulated Request, and the context that opens its response."""
    prefix, context = sender_context(config, suite, REQUEST_LABEL, ephemeral)
    return prefix + context.hpke.seal(plaintext, b""), context


def parse_header(header: bytes, keys: Mapping[int, GatewayKey]) -> tuple[Header, GatewayKey]:
    """Gateway: the 7-byte header and the key it names; UnknownKey when the key id or the
    algorithms do not match a published configuration (section 4.3, steps 1a and 1b)."""
    reader = Reader(header)
    key_id, kem_id, kdf_id, aead_id = reader.uint(1), reader.uint(2), reader.uint(2), reader.uint(2)
    reader.end()
    key = keys.get(key_id)
    if key is None or kem_id != key.config.kem_id:
        raise UnknownKey("key id")
    suite = next((s for s in key.config.suites if (s.kdf_id, s.aead_id) == (kdf_id, aead_id)), None)
    if suite is None:
        raise UnknownKey("suite")
    return Header(key_id, kem_id, suite), key


def receiver_context(header: Header, key: GatewayKey, enc: bytes, label: bytes) -> Context:
    cipher = hpke_suite(header.kem_id, header.suite)
    try:
        ctx = cipher.create_recipient_context(enc, key.private_key, info=header.info(label))
    except Exception as e:  # pyhpke raises ValueError for a low-order point, among others
        raise DecryptFailed("encapsulated key") from e
    return Context(header.suite, enc, ctx)


def open_hpke(context: Context, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return context.hpke.open(ciphertext, aad)
    except Exception as e:  # pyhpke's OpenError, and anything else it may raise: no detail
        raise DecryptFailed("request") from e


def decapsulate_request(
    keys: Mapping[int, GatewayKey], enc_request: bytes, max_size: int = MAX_MESSAGE
) -> tuple[bytes, Context]:
    """Gateway: the plaintext request and the context that protects its response."""
    if len(enc_request) > max_size:
        raise TooLarge("request")
    header, key = parse_header(enc_request[:HEADER_SIZE], keys)
    enc_end = HEADER_SIZE + KEM_PUBLIC_KEY_SIZE[header.kem_id]
    enc, ciphertext = enc_request[HEADER_SIZE:enc_end], enc_request[enc_end:]
    if len(ciphertext) < AEAD_TAG_SIZE:  # and so is enc complete
        raise Malformed("request ciphertext")
    context = receiver_context(header, key, enc, REQUEST_LABEL)
    return open_hpke(context, ciphertext, b""), context


def encapsulate_response(context: Context, plaintext: bytes, response_nonce: bytes | None = None) -> bytes:
    """Gateway: the Encapsulated Response. `response_nonce` is for test vectors only."""
    if response_nonce is None:
        response_nonce = secrets.token_bytes(context.suite.entropy_size)
    elif len(response_nonce) != context.suite.entropy_size:
        raise ValueError("response nonce size")
    key, nonce = context.response_key(RESPONSE_LABEL, response_nonce)
    return response_nonce + context.suite.aead(key).encrypt(nonce, plaintext, b"")


def decapsulate_response(context: Context, enc_response: bytes, max_size: int = MAX_MESSAGE) -> bytes:
    """Client: the plaintext response."""
    if len(enc_response) > max_size:
        raise TooLarge("response")
    size = context.suite.entropy_size
    if len(enc_response) < size + AEAD_TAG_SIZE:
        raise Malformed("response")
    key, nonce = context.response_key(RESPONSE_LABEL, enc_response[:size])
    try:
        return context.suite.aead(key).decrypt(nonce, enc_response[size:], b"")
    except InvalidTag as e:
        raise DecryptFailed("response") from e
