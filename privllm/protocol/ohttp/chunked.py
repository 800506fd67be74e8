"""
Chunked Oblivious HTTP, following draft-ietf-ohai-chunked-ohttp-08 (the working group's
text of February 2026, github.com/ietf-wg-ohai/draft-ohai-chunked-ohttp tag
draft-ietf-ohai-chunked-ohttp-08).

Both directions: a prefix (the request header and `enc`, or the response nonce), then chunks,
each after its varint length, then a zero length and the final chunk, which runs to the end
of the stream and is sealed with the AAD "final". Response chunk i is sealed under
`aead_nonce XOR I2OSP(i, Nn)`; request chunks use the HPKE context's own sequence. A
non-final chunk never carries an empty plaintext (the draft makes one a decryption error).

Readers are fed arbitrary splits of the stream and yield plaintext chunks as they complete;
`end()` is the end of the transport and returns the final chunk, or raises Truncated.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from pyhpke import KEMKeyPair

from ..errors import ProtocolError
from .errors import DecryptFailed, TooLarge, TooManyChunks, Truncated
from .keyconfig import KeyConfig
from .message import HEADER_SIZE, Context, GatewayKey, Header, open_hpke, parse_header, receiver_context, sender_context
from .suites import AEAD_NONCE_SIZE, AEAD_TAG_SIZE, KEM_PUBLIC_KEY_SIZE, SymmetricSuite
from .wire import FedReader, decode_varint, encode_varint, varint_size

__all__ = [
    "FINAL_AAD",
    "MAX_CHUNK",
    "MAX_CHUNKS",
    "REQUEST_LABEL",
    "RESPONSE_LABEL",
    "ChunkStateError",
    "ChunkedRequestOpener",
    "ChunkedRequestSealer",
    "ChunkedResponseOpener",
    "ChunkedResponseSealer",
]

REQUEST_LABEL = b"message/bhttp chunked request"
RESPONSE_LABEL = b"message/bhttp chunked response"
FINAL_AAD = b"final"
MAX_CHUNK = 1 << 14  # plaintext bytes: what the draft requires every receiver to take, and senders to keep to
MAX_CHUNKS = 2**32  # far below the 256**Nn nonce space; a chat stream never comes close


class ChunkStateError(ProtocolError):
    """The caller broke the sealer's rules (sealed after the final chunk, an empty or oversize
    chunk): a bug here, not a peer's doing, so no OhttpError, which a reader of peer bytes catches."""

    code = "chunk_state"


class _Sealer:
    def __init__(self, prefix: bytes, max_chunk: int, max_chunks: int) -> None:
        self._prefix = prefix
        self._max_chunk = max_chunk
        self._max_chunks = max_chunks
        self._count = 0
        self.finished = False

    def seal(self, chunk: bytes, final: bool = False) -> bytes:
        """The bytes to send for this chunk; the first call's carry the prefix too."""
        if self.finished:
            raise ChunkStateError("the message already ended")
        if not chunk and not final:
            raise ChunkStateError("a non-final chunk must not be empty")
        if len(chunk) > self._max_chunk:
            raise ChunkStateError("chunk too large")
        if self._count >= self._max_chunks:
            raise ChunkStateError("too many chunks")
        sealed = self._seal(chunk, FINAL_AAD if final else b"", self._count)
        self._count += 1
        self.finished = final
        out = self._prefix + encode_varint(0 if final else len(sealed)) + sealed
        self._prefix = b""
        return out

    def _seal(self, chunk: bytes, aad: bytes, index: int) -> bytes:
        raise NotImplementedError


class _Opener(FedReader[bytes]):
    def __init__(self, max_chunk: int, max_chunks: int) -> None:
        super().__init__()
        self._max_sealed = max_chunk + AEAD_TAG_SIZE
        self._max_chunks = max_chunks
        self._count = 0
        self._started = False  # the prefix is read
        self._final = False  # the zero length is read: the rest is the final chunk

    def end(self) -> bytes:
        """The transport ended: the final chunk's plaintext (maybe empty), or Truncated."""
        self._closing()
        if not self._final:
            raise Truncated("no final chunk")
        return self._open_chunk(bytes(self._buffer), final=True)

    def _advance(self) -> list[bytes]:
        if not self._started:
            self._started = self._read_prefix()
            if not self._started:
                return []
        opened: list[bytes] = []
        while not self._final and self._buffer:
            size = varint_size(self._buffer[0])
            if len(self._buffer) < size:
                break
            length = decode_varint(self._buffer[:size])
            if length == 0:
                del self._buffer[:size]
                self._final = True
            elif length > self._max_sealed:
                raise TooLarge("chunk")
            elif len(self._buffer) < size + length:
                break
            else:
                sealed = bytes(self._buffer[size : size + length])
                del self._buffer[: size + length]
                opened.append(self._open_chunk(sealed, final=False))
        if self._final and len(self._buffer) > self._max_sealed:
            raise TooLarge("final chunk")
        return opened

    def _open_chunk(self, sealed: bytes, final: bool) -> bytes:
        if self._count >= self._max_chunks:
            raise TooManyChunks("chunk count")
        plaintext = self._open(sealed, FINAL_AAD if final else b"", self._count)
        self._count += 1
        if not plaintext and not final:
            raise DecryptFailed("empty non-final chunk")
        return plaintext

    def _read_prefix(self) -> bool:
        """Consume the prefix from the buffer once it is all there; False while it is not."""
        raise NotImplementedError

    def _open(self, sealed: bytes, aad: bytes, index: int) -> bytes:
        raise NotImplementedError


def _chunk_nonce(base: bytes, index: int) -> bytes:
    return (int.from_bytes(base, "big") ^ index).to_bytes(AEAD_NONCE_SIZE, "big")


class ChunkedResponseSealer(_Sealer):
    """Gateway: the response nonce, then each chunk of the response sealed in order."""

    def __init__(
        self,
        context: Context,
        response_nonce: bytes | None = None,
        max_chunk: int = MAX_CHUNK,
        max_chunks: int = MAX_CHUNKS,
    ) -> None:
        """`response_nonce` is for test vectors only; leave it None so a fresh one is drawn."""
        size = context.suite.entropy_size
        if response_nonce is None:
            response_nonce = secrets.token_bytes(size)
        elif len(response_nonce) != size:
            raise ValueError("response nonce size")
        super().__init__(response_nonce, max_chunk, max_chunks)
        key, self._nonce = context.response_key(RESPONSE_LABEL, response_nonce)
        self._aead = context.suite.aead(key)

    def _seal(self, chunk: bytes, aad: bytes, index: int) -> bytes:
        return self._aead.encrypt(_chunk_nonce(self._nonce, index), chunk, aad)


class ChunkedResponseOpener(_Opener):
    """Client: reads the response nonce, then opens each chunk in order."""

    def __init__(self, context: Context, max_chunk: int = MAX_CHUNK, max_chunks: int = MAX_CHUNKS) -> None:
        super().__init__(max_chunk, max_chunks)
        self._context = context

    def _read_prefix(self) -> bool:
        size = self._context.suite.entropy_size
        if len(self._buffer) < size:
            return False
        key, self._nonce = self._context.response_key(RESPONSE_LABEL, bytes(self._buffer[:size]))
        self._aead = self._context.suite.aead(key)
        del self._buffer[:size]
        return True

    def _open(self, sealed: bytes, aad: bytes, index: int) -> bytes:
        try:
            return self._aead.decrypt(_chunk_nonce(self._nonce, index), sealed, aad)
        except InvalidTag as e:
            raise DecryptFailed("response chunk") from e


class ChunkedRequestSealer(_Sealer):
    """Client: the request header and `enc`, then each chunk sealed with the HPKE context.
    `context` opens the chunked response."""

    def __init__(
        self,
        config: KeyConfig,
        suite: SymmetricSuite,
        ephemeral: KEMKeyPair | None = None,
        max_chunk: int = MAX_CHUNK,
        max_chunks: int = MAX_CHUNKS,
    ) -> None:
        """`ephemeral` is for test vectors only; leave it None so a fresh key is drawn."""
        prefix, self.context = sender_context(config, suite, REQUEST_LABEL, ephemeral)
        super().__init__(prefix, max_chunk, max_chunks)

    def _seal(self, chunk: bytes, aad: bytes, index: int) -> bytes:
        return self.context.hpke.seal(chunk, aad)


class ChunkedRequestOpener(_Opener):
    """Gateway: reads the header (UnknownKey as soon as its 7 bytes name no published key)
    and `enc`, then opens each chunk. `context`, once set, protects the response."""

    def __init__(
        self, keys: Mapping[int, GatewayKey], max_chunk: int = MAX_CHUNK, max_chunks: int = MAX_CHUNKS
    ) -> None:
        super().__init__(max_chunk, max_chunks)
        self._keys = keys
        self._header: tuple[Header, GatewayKey] | None = None
        self.context: Context | None = None

    def _read_prefix(self) -> bool:
        if len(self._buffer) < HEADER_SIZE:
            return False
        if self._header is None:
            self._header = parse_header(bytes(self._buffer[:HEADER_SIZE]), self._keys)
        header, key = self._header
        size = HEADER_SIZE + KEM_PUBLIC_KEY_SIZE[header.kem_id]
        if len(self._buffer) < size:
            return False
        self.context = receiver_context(header, key, bytes(self._buffer[HEADER_SIZE:size]), REQUEST_LABEL)
        del self._buffer[:size]
        return True

    def _open(self, sealed: bytes, aad: bytes, index: int) -> bytes:
        assert self.context is not None  # set with the prefix
        return open_hpke(self.context, sealed, aad)
