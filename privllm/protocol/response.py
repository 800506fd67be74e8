"""The client's reader of a response stream, sans-IO: SSE bytes in, opened chunks out.

Every chunk handed out has the documented shape (docs/protocol.md), so a caller may index it
without further checks; anything else is StreamError("malformed").
"""

from __future__ import annotations

from typing import Any

from . import suite
from .encoding import EncodingError, b64decode, is_scalar_text, loads_bounded
from .request import SealedRequest
from .sse import SSEError, SSEParser
from .stream import StreamError, StreamOpener

__all__ = ["FINISH_REASONS", "MAX_INIT_BYTES", "MAX_TOKENS", "ResponseReader", "checked_chunk"]

MAX_INIT_BYTES = 256
MAX_TOKENS = 2**53 - 1  # counts every JSON reader holds exactly
FINISH_REASONS = ("stop", "length")


def _text(chunk: dict[str, Any], member: str) -> bool:
    value = chunk.get(member)
    return isinstance(value, str) and is_scalar_text(value)


def _usage(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_TOKENS for n in value.values()
    )


def checked_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    """The chunk if its members have the documented types (text a client can print), else
    StreamError. Members a reader does not use are left alone."""
    kind = chunk["type"]
    if kind == "delta":
        good = _text(chunk, "text")
    elif kind == "done":
        good = chunk.get("finish_reason") in FINISH_REASONS and _usage(chunk.get("usage"))
    elif kind == "error":
        good = _text(chunk, "code") and ("message" not in chunk or _text(chunk, "message"))
    else:
        good = False
    if not good:
        raise StreamError("malformed")
    return chunk


class ResponseReader:
    """Feed the body as it arrives; each call returns the chunks opened so far, in order."""

    def __init__(self, sealed: SealedRequest) -> None:
        self._sealed = sealed
        self._sse = SSEParser()
        self._opener: StreamOpener | None = None
        # Bytes fed: v1's keep-alives are SSE comments, which TLS to the router protects.
        self.progress = 0

    @property
    def finished(self) -> bool:
        return self._opener is not None and self._opener.finished

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.progress += len(data)
        try:
            events = self._sse.feed(data)
        except SSEError as e:
            raise StreamError("malformed") from e
        chunks = []
        for event in events:
            if event.event == "init":
                self._init(event.data)
            elif event.event == "chunk":
                if self._opener is None:
                    raise StreamError("malformed")
                chunks.append(checked_chunk(self._opener.open(event.data)[0]))
            else:
                raise StreamError("malformed")
        return chunks

    def _init(self, data: str) -> None:
        if self._opener is not None:
            raise StreamError("malformed")
        try:
            init = loads_bounded(data, MAX_INIT_BYTES, max_depth=1)
            if not isinstance(init, dict) or set(init) != {"response_nonce"}:
                raise StreamError("malformed")
            nonce = b64decode(init["response_nonce"], suite.RESPONSE_NONCE_SIZE)
        except EncodingError as e:
            raise StreamError("malformed") from e
        self._opener = StreamOpener(self._sealed.stream_keys(nonce))

    def end(self) -> None:
        """The body ended: without an init and a verified final chunk, the answer was truncated."""
        if self._opener is None:
            raise StreamError("truncated")
        self._opener.end()
