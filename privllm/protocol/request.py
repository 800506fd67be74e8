"""Seal a chat request (client) and open it (router), with the response keys each end derives."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from pyhpke import KEMKeyInterface, KEMKeyPair

from . import suite
from .encoding import b64encode, dumps
from .envelope import Envelope
from .errors import DECRYPT_FAILED, RequestRejected
from .stream import StreamKeys, derive_stream_keys

__all__ = [
    "Encapsulation",
    "OpenedRequest",
    "SealedRequest",
    "encapsulate",
    "new_request_id",
    "open_request",
    "seal_request",
]


def new_request_id() -> str:
    return secrets.token_urlsafe(24)  # 32 characters of A-Z a-z 0-9 _ -


@dataclass(frozen=True)
class SealedRequest:
    """What the client keeps to read the answer: the body to send and the response secret."""

    body: dict[str, Any]
    encapsulated_key: bytes
    response_secret: bytes

    def stream_keys(self, response_nonce: bytes) -> StreamKeys:
        return derive_stream_keys(self.response_secret, self.encapsulated_key, response_nonce)


@dataclass(frozen=True)
class Encapsulation:
    """An HPKE sender context, made before the request it seals: it does not depend on the
    plaintext, so an app can make it while the user writes. Seal with it exactly once."""

    router_public_key: bytes
    encapsulated_key: bytes
    context: Any
    device_pubkey: bytes


def encapsulate(
    router_public_key: bytes, device_private_key: bytes, ephemeral: KEMKeyPair | None = None
) -> Encapsulation:
    """`ephemeral` is for reproducible examples only; leave it None so a fresh key is drawn."""
    device = suite.private_key(device_private_key)
    enc, ctx = suite.SUITE.create_sender_context(
        suite.public_key(router_public_key), info=suite.REQUEST_INFO, sks=device, eks=ephemeral
    )
    return Encapsulation(router_public_key, enc, ctx, suite.public_of(device_private_key))


def seal_request(
    *,
    key_id: int,
    router_public_key: bytes,
    device_private_key: bytes,
    plaintext: dict[str, Any],
    timestamp: int,
    request_id: str,
    ephemeral: KEMKeyPair | None = None,
    encapsulation: Encapsulation | None = None,
) -> SealedRequest:
    """Seal with a fresh encapsulation, or with one made ahead for this router key (used up here)."""
    if encapsulation is None:
        encapsulation = encapsulate(router_public_key, device_private_key, ephemeral)
    elif not hmac.compare_digest(encapsulation.router_public_key, router_public_key):
        raise ValueError("the encapsulation was made for another router key")
    aad = suite.request_aad(key_id, timestamp, request_id)
    ciphertext = encapsulation.context.seal(dumps(plaintext), aad)
    body = {
        "v": suite.VERSION,
        "key_id": key_id,
        "encapsulated_key": b64encode(encapsulation.encapsulated_key),
        "device_pubkey": b64encode(encapsulation.device_pubkey),
        "timestamp": timestamp,
        "request_id": request_id,
        "aad": b64encode(aad),
        "ciphertext": b64encode(ciphertext),
    }
    response_secret = encapsulation.context.export(suite.RESPONSE_EXPORT_LABEL, 32)
    return SealedRequest(body, encapsulation.encapsulated_key, response_secret)


@dataclass(frozen=True)
class OpenedRequest:
    plaintext: bytes
    response_secret: bytes


def open_request(envelope: Envelope, router_key: KEMKeyInterface) -> OpenedRequest:
    """Check the AAD and open the ciphertext with the ring key's own private key object (never
    a copy); any failure is DECRYPT_FAILED, with no detail."""
    expected = suite.request_aad(envelope.key_id, envelope.timestamp, envelope.request_id)
    if not hmac.compare_digest(expected, envelope.aad):
        raise RequestRejected(DECRYPT_FAILED)
    try:
        ctx = suite.SUITE.create_recipient_context(
            envelope.encapsulated_key,
            router_key,
            info=suite.REQUEST_INFO,
            pks=suite.public_key(envelope.device_pubkey),
        )
        plaintext = ctx.open(envelope.ciphertext, envelope.aad)
    except Exception as e:  # pyhpke raises several types (OpenError, ValueError for low-order points)
        raise RequestRejected(DECRYPT_FAILED) from e
    return OpenedRequest(plaintext, ctx.export(suite.RESPONSE_EXPORT_LABEL, 32))
