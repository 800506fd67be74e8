"""One error family for Oblivious HTTP, each failure its own class with a short code.

The codes that an adapter turns into a plaintext reply are those of protocol v1
(privllm/protocol/errors.py); the others end a response stream on the client."""

from __future__ import annotations


class OhttpError(Exception):
    """Anything a peer sent that this end refuses; `code` names the failure, with no detail."""

    code = "malformed"


class Malformed(OhttpError):
    """Not the exact encoding: short, trailing bytes, a bad length or value."""

    code = "malformed"


class TooLarge(OhttpError):
    """A length, count or size beyond the explicit limit, refused before it is buffered."""

    code = "too_large"


class Unsupported(OhttpError):
    """An algorithm identifier outside the allow-list, or a format left out (e.g. indeterminate BHTTP)."""

    code = "unsupported"


class UnknownKey(OhttpError):
    """The gateway has no key with this id, or not for this KEM, KDF and AEAD (RFC 9458 section 5.3)."""

    code = "unknown_key"


class DecryptFailed(OhttpError):
    """HPKE or AEAD open failed: a wrong key, a flipped bit, a reordered or reframed chunk."""

    code = "decrypt_failed"


class Truncated(OhttpError):
    """A chunked message ended without its final chunk."""

    code = "truncated"


class AfterFinal(OhttpError):
    """Bytes arrived after a chunked message was complete, or after it failed."""

    code = "after_final"


class TooManyChunks(OhttpError):
    """A chunked message used more chunks than the explicit limit, far below nonce wrap-around."""

    code = "too_many_chunks"
