"""One error family for Oblivious HTTP, each failure its own class.

A class's `code` is its own, unique among privllm's errors (privllm/test/test_errors.py); an
instance's `code` is the short code it answers with, `wire_code`: those an adapter turns into a
plaintext reply are protocol v1's (privllm/protocol/errors.py), the others end a response
stream on the client. As with RequestRejected, the instance carries the more precise code."""

from __future__ import annotations

from ..errors import ProtocolError

__all__ = [
    "AfterFinal",
    "DecryptFailed",
    "Malformed",
    "OhttpError",
    "TooLarge",
    "TooManyChunks",
    "Truncated",
    "UnknownKey",
    "Unsupported",
]


class OhttpError(ProtocolError):
    """Anything a peer sent that this end refuses; `code` names the failure, with no detail."""

    code = "ohttp"
    wire_code = "malformed"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.code = self.wire_code


class Malformed(OhttpError):
    """Not the exact encoding: short, trailing bytes, a bad length or value."""

    code = "ohttp_malformed"
    wire_code = "malformed"


class TooLarge(OhttpError):
    """A length, count or size beyond the explicit limit, refused before it is buffered."""

    code = "ohttp_too_large"
    wire_code = "too_large"


class Unsupported(OhttpError):
    """An algorithm identifier outside the allow-list, or a format left out."""

    code = "ohttp_unsupported"
    wire_code = "unsupported"


class UnknownKey(OhttpError):
    """The gateway has no key with this id, or not for this KEM, KDF and AEAD (RFC 9458 section 5.3)."""

    code = "ohttp_unknown_key"
    wire_code = "unknown_key"


class DecryptFailed(OhttpError):
    """HPKE or AEAD open failed: a wrong key, a flipped bit, a reordered or reframed chunk."""

    code = "ohttp_decrypt_failed"
    wire_code = "decrypt_failed"


class Truncated(OhttpError):
    """A chunked message ended without its final chunk."""

    code = "ohttp_truncated"
    wire_code = "truncated"


class AfterFinal(OhttpError):
    """Bytes arrived after a chunked message was complete, or after it failed."""

    code = "ohttp_after_final"
    wire_code = "after_final"


class TooManyChunks(OhttpError):
    """A chunked message used more chunks than the explicit limit, far below nonce wrap-around."""

    code = "ohttp_too_many_chunks"
    wire_code = "too_many_chunks"
