"""
What every backend dialect's stream translator shares, sans-IO: the deltas it yields, the
upstream's errors it raises, and llama-server's SSE events and refusals read strictly. The
OpenAI-compatible translator (openai_stream.py) and the Harmony one (privllm/harmony) both
build on this module, so neither reaches into the other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..protocol.encoding import EncodingError, loads_bounded
from ..protocol.sse import SSEError, SSEEvent, SSEParser
from .errors import UpstreamError

__all__ = [
    "MAX_EVENT_CHARS",
    "MAX_REFUSAL_BYTES",
    "REQUEST_ERRORS",
    "Delta",
    "UpstreamProtocolError",
    "UpstreamRequestError",
    "event_object",
    "refusal_code",
    "request_error_code",
    "sse_events",
]

MAX_EVENT_CHARS = 1 << 20  # the SSE parser's own event bound
MAX_REFUSAL_BYTES = 1 << 16  # the body of a refusal read, at most, to learn its type
# llama-server's error types that a request causes (tools/server/utils.hpp); any other
# error is the server's own and counts against the node.
REQUEST_ERRORS = {"exceed_context_size_error": "too_long", "invalid_request_error": "bad_request"}


class Delta(NamedTuple):  # tuples: made once per streamed delta, cheaply
    text: str


class UpstreamProtocolError(UpstreamError):
    """The upstream stream was malformed, reported an error of its own, or ended early."""

    code = "upstream_protocol"


class UpstreamRequestError(UpstreamError):
    """The upstream refused the request itself (too long, invalid): not the node's failure."""

    code = "upstream_request"

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def sse_events(parser: SSEParser, data: bytes) -> list[SSEEvent]:
    try:
        return parser.feed(data)
    except SSEError as e:
        raise UpstreamProtocolError(str(e)) from e


def request_error_code(error: object) -> str | None:
    """`too_long` or `bad_request` when llama-server's error object blames the request."""
    kind = error.get("type") if isinstance(error, dict) else None
    return REQUEST_ERRORS.get(kind) if isinstance(kind, str) else None


def refusal_code(status: int, body: bytes) -> str | None:
    """For a non-200 answer: the sealed code when the request caused it (HTTP 400 with a
    request error type, or 413), None when it counts against the node (5xx, 403, 404, ...)."""
    if status == 413:
        return "too_long"
    if status != 400:
        return None
    try:
        obj = loads_bounded(body, MAX_REFUSAL_BYTES)
    except EncodingError:
        return None
    return request_error_code(obj.get("error")) if isinstance(obj, dict) else None


def event_object(event: SSEEvent) -> dict[str, Any]:
    """An upstream event's JSON object; an error event raises the request's or the node's error."""
    try:
        obj = loads_bounded(event.data, MAX_EVENT_CHARS)
    except EncodingError as e:
        raise UpstreamProtocolError("upstream event is not JSON") from e
    if not isinstance(obj, dict):
        raise UpstreamProtocolError("upstream event is not an object")
    if "error" in obj or event.event == "error":
        code = request_error_code(obj.get("error", obj))
        if code is not None:
            raise UpstreamRequestError(code)
        raise UpstreamProtocolError("upstream reported an error")
    return obj
