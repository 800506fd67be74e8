"""
A protocol v2 chat request: an Encapsulated Request (RFC 9458 section 4) whose plaintext is a
known-length Binary HTTP `POST /api/chat` with a JSON body:

    {"v": 2, "timestamp": T, "device_pubkey": b64, "proof": b64, "chat": {...v1 plaintext...}}

The router learns the key id and `enc` before any decryption (`peek`), for the replay screen
and the proof of work; then it opens the request, reads the Binary HTTP and the JSON strictly
(allow-lists, exact members, bounded sizes) and verifies the device proof (device.py) with the
private key the request was encapsulated to. Every refusal is an OhttpError whose `code` is
the wire code: malformed, too_large, unknown_key or decrypt_failed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from pyhpke import KEMKeyPair

from ..chat import MAX_DEPTH as CHAT_MAX_DEPTH
from ..device import PROOF_SIZE, DeviceProofError, device_proof, verify_device_proof
from ..encoding import EncodingError, b64decode, b64encode, dumps, loads_bounded
from ..envelope import MAX_TIMESTAMP
from ..ohttp import bhttp
from ..ohttp.errors import DecryptFailed, Malformed, TooLarge, UnknownKey, Unsupported
from ..ohttp.keyconfig import KeyConfig
from ..ohttp.message import (
    HEADER_SIZE,
    MAX_MESSAGE,
    REQUEST_LABEL,
    Context,
    GatewayKey,
    decapsulate_request,
    sender_context,
)
from ..ohttp.suites import AEAD_TAG_SIZE, KEM_PUBLIC_KEY_SIZE, KEM_X25519, SymmetricSuite
from ..ohttp.wire import Reader
from ..suite import X25519_KEY_SIZE, public_of

__all__ = [
    "AUTHORITY",
    "CONTENT_TYPE",
    "MEMBERS",
    "METHOD",
    "PATH",
    "SCHEME",
    "VERSION",
    "OpenedV2",
    "Peeked",
    "SealedV2",
    "open_chat_request",
    "peek",
    "seal_chat_request",
]

VERSION = 2
METHOD = b"POST"
SCHEME = b"https"
AUTHORITY = "privllm"  # what the client names; the router does not check it
PATH = b"/api/chat"
CONTENT_TYPE = b"application/json"
MEMBERS = frozenset({"v", "timestamp", "device_pubkey", "proof", "chat"})
_MAX_DEPTH = 1 + CHAT_MAX_DEPTH  # the members, then the v1 chat request
_BHTTP_LIMITS = bhttp.Limits(max_fields=4, max_section=256, max_informational=0)
_ENC_SIZE = KEM_PUBLIC_KEY_SIZE[KEM_X25519]


@dataclasses.dataclass(frozen=True)
class SealedV2:
    """What the client sends (`body`, `message/ohttp-req`) and keeps (`context` opens the answer)."""

    body: bytes
    context: Context
    enc: bytes


def seal_chat_request(
    config: KeyConfig,
    device_private: bytes,
    chat: dict[str, Any],
    timestamp: int,
    ephemeral: KEMKeyPair | None = None,
    authority: str = AUTHORITY,
    suite: SymmetricSuite | None = None,
) -> SealedV2:
    """Seal `chat` (v1's plaintext object) to `config`, with the first suite it offers unless
    `suite` is given. `ephemeral` is for reproducible examples only: leave it None."""
    prefix, context = sender_context(config, suite or config.suites[0], REQUEST_LABEL, ephemeral)
    content = {
        "v": VERSION,
        "timestamp": timestamp,
        "device_pubkey": b64encode(public_of(device_private)),
        "proof": b64encode(device_proof(device_private, config.public_key, context.enc, timestamp)),
        "chat": chat,
    }
    request = bhttp.Request(
        METHOD, SCHEME, authority.encode("ascii"), PATH, ((b"content-type", CONTENT_TYPE),), dumps(content)
    )
    return SealedV2(prefix + context.hpke.seal(bhttp.encode_request(request), b""), context, context.enc)


class Peeked(NamedTuple):
    key_id: int
    suite: SymmetricSuite
    enc: bytes


def peek(body: bytes, max_size: int = MAX_MESSAGE) -> Peeked:
    """The key id, suite and `enc` of a request, before any decryption and without the keys:
    TooLarge, Malformed when too short to hold a ciphertext, UnknownKey for a KEM, KDF or AEAD
    outside the allow-list (RFC 9458 section 5.3 answers those as an unknown key)."""
    if len(body) > max_size:
        raise TooLarge("request")
    if len(body) < HEADER_SIZE + _ENC_SIZE + AEAD_TAG_SIZE:
        raise Malformed("request")
    header = Reader(body[:HEADER_SIZE])
    key_id, kem_id, kdf_id, aead_id = header.uint(1), header.uint(2), header.uint(2), header.uint(2)
    if kem_id != KEM_X25519:
        raise UnknownKey("KEM")
    try:
        suite = SymmetricSuite(kdf_id, aead_id)
    except Unsupported as e:
        raise UnknownKey("suite") from e
    return Peeked(key_id, suite, body[HEADER_SIZE : HEADER_SIZE + _ENC_SIZE])


@dataclasses.dataclass(frozen=True)
class OpenedV2:
    """An opened request: `chat_plaintext` is v1's plaintext (for chat.parse_chat_request),
    `context` protects the answer."""

    enc: bytes
    key_id: int
    timestamp: int
    device_pubkey: bytes
    chat_plaintext: bytes
    context: Context


def open_chat_request(keys: Mapping[int, GatewayKey], body: bytes, max_size: int = MAX_MESSAGE) -> OpenedV2:
    """Decapsulate with the key the header names, check the Binary HTTP request and its JSON,
    verify the device proof. Raises OhttpError only."""
    peeked = peek(body, max_size)
    plaintext, context = decapsulate_request(keys, body, max_size)
    members = _members(_content(plaintext, max_size), max_size)
    try:
        verify_device_proof(
            keys[peeked.key_id].private_key.raw, members.device_pubkey, context.enc, members.timestamp, members.proof
        )
    except DeviceProofError as e:
        raise DecryptFailed("device proof") from e
    return OpenedV2(context.enc, peeked.key_id, members.timestamp, members.device_pubkey, members.chat, context)


def _content(plaintext: bytes, max_size: int) -> bytes:
    """The JSON body of exactly `POST https://<any authority>/api/chat` with one content-type."""
    try:
        request = bhttp.decode_request(plaintext, _limits(max_size))
    except Unsupported as e:  # indeterminate length: a client of this protocol never sends it
        raise Malformed("framing") from e
    if (request.method, request.scheme, request.path) != (METHOD, SCHEME, PATH):
        raise Malformed("request line")
    if request.headers != ((b"content-type", CONTENT_TYPE),) or request.trailers:
        raise Malformed("fields")
    return request.content


def _limits(max_size: int) -> bhttp.Limits:
    return dataclasses.replace(_BHTTP_LIMITS, max_content=max_size)


class _Members(NamedTuple):
    timestamp: int
    device_pubkey: bytes
    proof: bytes
    chat: bytes


def _members(content: bytes, max_size: int) -> _Members:
    """The JSON's exact members, checked, and the chat object written back as JSON for v1's
    parser. ASCII escapes keep a lone surrogate (which the standard library's decoder, used
    for text with long numbers, lets through) for that parser to refuse."""
    try:
        obj = loads_bounded(content, max_size, _MAX_DEPTH)
        if not isinstance(obj, dict) or set(obj) != MEMBERS:
            raise Malformed("members")
        version, timestamp, chat = obj["v"], obj["timestamp"], obj["chat"]
        if not _integer(version, VERSION, VERSION) or not _integer(timestamp, 0, MAX_TIMESTAMP):
            raise Malformed("version or timestamp")
        if not isinstance(chat, dict):
            raise Malformed("chat")
        return _Members(
            timestamp,
            b64decode(obj["device_pubkey"], X25519_KEY_SIZE),
            b64decode(obj["proof"], PROOF_SIZE),
            json.dumps(chat, separators=(",", ":")).encode("ascii"),
        )
    except EncodingError as e:
        raise Malformed("json") from e


def _integer(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
