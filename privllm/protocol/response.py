"""The client's reader of a response stream, sans-IO: SSE bytes in, opened chunks out."""

from __future__ import annotations

import json
from typing import Any

from . import suite
from .encoding import EncodingError, b64decode
from .request import SealedRequest
from .sse import SSEError, SSEParser
from .stream import StreamError, StreamOpener


class ResponseReader:
    """Feed the body as it arrives; each call returns the chunks opened so far, in order."""

    def __init__(self, sealed: SealedRequest) -> None:
        self._sealed = sealed
        self._sse = SSEParser()
        self._opener: StreamOpener | None = None

    @property
    def finished(self) -> bool:
        return self._opener is not None and self._opener.finished

    def feed(self, data: bytes) -> list[dict[str, Any]]:
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
                chunks.append(self._opener.open(event.data)[0])
            else:
                raise StreamError("malformed")
        return chunks

    def _init(self, data: str) -> None:
        if self._opener is not None:
            raise StreamError("malformed")
        try:
            nonce = b64decode(json.loads(data)["response_nonce"], suite.RESPONSE_NONCE_SIZE)
        except (ValueError, KeyError, TypeError, EncodingError) as e:
            raise StreamError("malformed") from e
        self._opener = StreamOpener(self._sealed.stream_keys(nonce))

    def end(self) -> None:
        """The body ended: without an init and a verified final chunk, the answer was truncated."""
        if self._opener is None:
            raise StreamError("truncated")
        self._opener.end()
