"""
The sealed response stream: key schedule, sealer (router) and opener (client).

Chunk i is sealed under `key` and `nonce XOR I2OSP(i, 12)`; the last chunk of a stream
carries the AAD `final`, so truncation, reordering and chunks after the end are all
detected by the reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from . import suite
from .encoding import EncodingError, b64decode, b64encode, dumps, loads_bounded
from .errors import ProtocolError

__all__ = [
    "MAX_CHUNKS",
    "MAX_CHUNK_DEPTH",
    "StreamError",
    "StreamKeys",
    "StreamOpener",
    "StreamSealer",
    "StreamStateError",
    "chunk_nonce",
    "derive_stream_keys",
]

MAX_CHUNKS = 2**32  # far below the 2**96 nonce space; a stream never comes close
MAX_CHUNK_DEPTH = 4  # a chunk object nests two deep (done's usage)


@dataclass(frozen=True)
class StreamKeys:
    key: bytes
    nonce: bytes


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    mac = crypto_hmac.HMAC(salt, hashes.SHA256())
    mac.update(ikm)
    return mac.finalize()


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def derive_stream_keys(secret: bytes, enc: bytes, response_nonce: bytes) -> StreamKeys:
    """`secret` is ctx.Export("privllm/v1 response", 32) of the request's HPKE context."""
    if len(secret) != 32 or len(enc) != suite.X25519_KEY_SIZE or len(response_nonce) != suite.RESPONSE_NONCE_SIZE:
        raise ValueError("bad key schedule input sizes")
    prk = _hkdf_extract(enc + response_nonce, secret)
    return StreamKeys(
        key=_hkdf_expand(prk, b"key", suite.AEAD_KEY_SIZE),
        nonce=_hkdf_expand(prk, b"nonce", suite.AEAD_NONCE_SIZE),
    )


def chunk_nonce(base: int, index: int) -> bytes:
    """nonce XOR I2OSP(index, 12), with the nonce base read once as an integer (this runs per chunk)."""
    return (base ^ index).to_bytes(suite.AEAD_NONCE_SIZE, "big")


class StreamStateError(ProtocolError):
    """The caller broke the stream's rules (e.g. sealed after the final chunk)."""

    code = "stream_state"


class StreamSealer:
    """Router side: seals chunk objects in order, exactly one of them final."""

    def __init__(self, keys: StreamKeys, pad_to: int = 0) -> None:
        self._aead = ChaCha20Poly1305(keys.key)
        self._nonce = int.from_bytes(keys.nonce, "big")
        self._index = 0
        self._pad_to = pad_to
        self.finished = False

    def seal(self, chunk: dict[str, Any], final: bool = False) -> str:
        return self.seal_json(dumps(chunk), final)

    def seal_json(self, plaintext: bytes, final: bool = False) -> str:
        """Seal a chunk object already encoded as compact JSON (a delta's is built directly)."""
        if self.finished:
            raise StreamStateError("the stream already ended")
        if self._index >= MAX_CHUNKS:
            raise StreamStateError("too many chunks")
        if self._pad_to and len(plaintext) % self._pad_to:
            plaintext += b"\x00" * (self._pad_to - len(plaintext) % self._pad_to)
        aad = suite.FINAL_AAD if final else b""
        sealed = self._aead.encrypt(chunk_nonce(self._nonce, self._index), plaintext, aad)
        self._index += 1
        self.finished = final
        return b64encode(sealed)


class StreamError(ProtocolError):
    """The stream cannot be trusted any further: the reader must stop."""

    code = "stream_untrusted"

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # "tampered" or "after_final" or "truncated" or "malformed"


class StreamOpener:
    """Client side: opens chunks in order and notices tampering, reordering and truncation."""

    MAX_CHUNK = 1 << 20

    def __init__(self, keys: StreamKeys) -> None:
        self._aead = ChaCha20Poly1305(keys.key)
        self._nonce = int.from_bytes(keys.nonce, "big")
        self._index = 0
        self.finished = False

    def open(self, data: str) -> tuple[dict[str, Any], bool]:
        """Return (chunk, is_final); raise StreamError on anything untrustworthy."""
        if self.finished:
            raise StreamError("after_final")
        try:
            sealed = b64decode(data, max_length=self.MAX_CHUNK)
        except EncodingError as e:
            raise StreamError("malformed") from e
        nonce = chunk_nonce(self._nonce, self._index)
        final = False
        try:
            plaintext = self._aead.decrypt(nonce, sealed, b"")
        except InvalidTag:
            try:
                plaintext = self._aead.decrypt(nonce, sealed, suite.FINAL_AAD)
            except InvalidTag as e:
                self.finished = True
                raise StreamError("tampered") from e
            final = True
        self._index += 1
        self.finished = final
        try:
            chunk = loads_bounded(plaintext.rstrip(b"\x00"), self.MAX_CHUNK, max_depth=MAX_CHUNK_DEPTH)
        except EncodingError as e:
            raise StreamError("malformed") from e
        if not isinstance(chunk, dict) or not isinstance(chunk.get("type"), str):
            raise StreamError("malformed")
        if final != (chunk["type"] in ("done", "error")):
            raise StreamError("malformed")
        return chunk, final

    def end(self) -> None:
        """Call when the transport ends: a stream without its final chunk was truncated."""
        if not self.finished:
            raise StreamError("truncated")
