"""
A protocol v2 answer: a chunked Oblivious HTTP response (draft-ietf-ohai-chunked-ohttp-08)
whose plaintext is a streamed Binary HTTP response (RFC 9292, indeterminate length).

The content, `application/privllm-events`, is a stream of JSON lines, each one of v1's chunk
objects (`{"type": "delta", ...}`) and a newline; 0x00 bytes between lines are padding. Lines
do not depend on chunk boundaries, but the router writes one BHTTP content chunk per OHTTP
chunk, each event's line padded to a multiple of `pad_to`, and a keep-alive is a chunk of
padding only. The last event, `done` or `error`, and the BHTTP end travel in the OHTTP final
chunk, so a reader knows the answer is whole only when the AEAD says so.

A refusal after decryption (e.g. the inner 401 `stale`, with a `date` field carrying the
router's time, RFC 9458 section 6.5) is a whole answer of one final chunk: head, one error
event, end. The reader raises v1's StreamError for anything it cannot trust, so a client
handles both versions alike.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from datetime import datetime
from email.utils import formatdate
from typing import Any

from ..encoding import EncodingError, dumps, loads_bounded
from ..ohttp.bhttp import Field
from ..ohttp.bhttp_stream import End, Head, ResponseDecoder, ResponseEncoder, StreamLimits
from ..ohttp.chunked import MAX_CHUNK, ChunkedResponseOpener, ChunkedResponseSealer
from ..ohttp.errors import AfterFinal, DecryptFailed, OhttpError, Truncated
from ..ohttp.message import Context
from ..response import checked_chunk
from ..stream import MAX_CHUNK_DEPTH, StreamError

__all__ = [
    "EVENTS_TYPE",
    "FINAL_TYPES",
    "MAX_EVENT",
    "ResponseReader",
    "ResponseStream",
    "http_date",
    "parse_http_date",
]

EVENTS_TYPE = b"application/privllm-events"
FINAL_TYPES = frozenset({"done", "error"})
MAX_EVENT = 1 << 20  # bytes of one event's line, as v1 bounds one chunk
_PIECE = MAX_CHUNK - 8  # room in one OHTTP chunk for a content chunk's length and the BHTTP end
_HEAD_LIMITS = StreamLimits(max_fields=2, max_section=256, max_chunk=MAX_CHUNK, max_informational=0)
_IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


def http_date(seconds: int) -> bytes:
    """IMF-fixdate (RFC 9110 section 5.6.7), the form of the `date` field."""
    return formatdate(seconds, usegmt=True).encode("ascii")


def parse_http_date(value: bytes) -> int:
    """Unix seconds of an IMF-fixdate; ValueError for any other form, or a date that does not exist."""
    text = value.decode("ascii")
    if not _IMF_FIXDATE.fullmatch(text):
        raise ValueError("not an IMF-fixdate")
    parsed = datetime.strptime(text[5:-4], "%d %b %Y %H:%M:%S")  # the names are checked above
    seconds = calendar.timegm(parsed.timetuple())
    if http_date(seconds) != value:  # the weekday must be the date's
        raise ValueError("wrong weekday")
    return seconds


def _line(obj: dict[str, Any], pad_to: int) -> bytes:
    line = dumps(obj) + b"\n"
    if pad_to > 1 and len(line) % pad_to:
        line += bytes(pad_to - len(line) % pad_to)
    return line


class ResponseStream:
    """Router: the bytes of one answer, in order: start, events and keep-alives, final; or a
    refusal alone. Misuse (out of order, a final type as an event) raises before anything is
    sealed out of turn."""

    def __init__(self, context: Context, pad_to: int, response_nonce: bytes | None = None) -> None:
        """`response_nonce` is for test vectors only; leave it None so a fresh one is drawn."""
        self._sealer = ChunkedResponseSealer(context, response_nonce)
        self._bhttp = ResponseEncoder()
        self._pad_to = pad_to

    def start(self, status: int = 200) -> bytes:
        """The response nonce and the first chunk: the BHTTP head."""
        return self._sealer.seal(self._bhttp.head(status, ((b"content-type", EVENTS_TYPE),)))

    def event(self, obj: dict[str, Any]) -> bytes:
        """One event that is not the last (a delta): one sealed chunk, more only for a line
        longer than a chunk holds."""
        if obj.get("type") in FINAL_TYPES:
            raise ValueError("a done or error event ends the answer: use final()")
        return b"".join(self._sealer.seal(self._bhttp.content(piece)) for piece in self._pieces(obj))

    def keepalive(self) -> bytes:
        """A sealed chunk of padding only, so relays see bytes while the model thinks."""
        return self._sealer.seal(self._bhttp.content(bytes(min(max(self._pad_to, 1), _PIECE))))

    def final(self, obj: dict[str, Any]) -> bytes:
        """The last event (done or error) and the BHTTP end, sealed as the final chunk."""
        if obj.get("type") not in FINAL_TYPES:
            raise ValueError("the last event is done or error")
        return self._last(obj)

    def _last(self, obj: dict[str, Any]) -> bytes:
        line = _line(obj, self._pad_to)
        if len(line) > _PIECE:
            # The last event must complete in the final chunk, so its newline goes there: the
            # padding, allowed between lines, moves before it (the size stays the same).
            text = dumps(obj) + b"\n"
            line = bytes(len(line) - len(text)) + text
        *pieces, last = [line[i : i + _PIECE] for i in range(0, len(line), _PIECE)]
        out = b"".join(self._sealer.seal(self._bhttp.content(piece)) for piece in pieces)
        return out + self._sealer.seal(self._bhttp.content(last) + self._bhttp.end(), final=True)

    def refusal(self, status: int, obj: dict[str, Any], date: int | None = None) -> bytes:
        """A whole answer of one final chunk: `status`, a `date` field when given (unix
        seconds), and the one error event."""
        if obj.get("type") != "error":
            raise ValueError("a refusal carries an error event")
        headers: tuple[Field, ...] = ((b"content-type", EVENTS_TYPE),)
        if date is not None:
            headers += ((b"date", http_date(date)),)
        head = self._bhttp.head(status, headers)
        line = _line(obj, self._pad_to)
        if len(head) + len(line) <= _PIECE:  # the usual case: one final chunk
            return self._sealer.seal(head + self._bhttp.content(line) + self._bhttp.end(), final=True)
        return self._sealer.seal(head) + self._last(obj)

    def _pieces(self, obj: dict[str, Any]) -> list[bytes]:
        line = _line(obj, self._pad_to)
        return [line[i : i + _PIECE] for i in range(0, len(line), _PIECE)]


def _stream_error(error: OhttpError) -> StreamError:
    if isinstance(error, DecryptFailed):
        return StreamError("tampered")
    if isinstance(error, Truncated):
        return StreamError("truncated")
    if isinstance(error, AfterFinal):
        return StreamError("after_final")
    return StreamError("malformed")


class ResponseReader:
    """Client: feed the body as it arrives; `feed` returns the events opened so far, `end` (at
    the end of the body) the last one. `status` and `date` (unix seconds, or None) are set
    once the head has arrived. Any StreamError closes the reader."""

    def __init__(self, context: Context, max_event: int = MAX_EVENT) -> None:
        self._opener = ChunkedResponseOpener(context)
        self._bhttp = ResponseDecoder(_HEAD_LIMITS)
        self._max_event = max_event
        self._line = bytearray()
        self._closed = False
        self.status: int | None = None
        self.date: int | None = None
        self.finished = False  # the last event was read
        # Chunks opened, keep-alives included: what a relay cannot forge, unlike bytes (a relay
        # trickling bytes of a chunk that never completes must not hold the client for ever).
        self.progress = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        return self._guarded(lambda: [e for chunk in self._opener.feed(data) for e in self._opened(chunk)])

    def _opened(self, plaintext: bytes) -> list[dict[str, Any]]:
        self.progress += 1
        return self._chunk(plaintext, False)

    def end(self) -> list[dict[str, Any]]:
        """The body ended: the events of the final chunk, which must be exactly the last one."""
        events = self._guarded(lambda: self._chunk(self._opener.end(), True))
        self._closed = True
        return events

    def _guarded(self, step: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        if self._closed:
            raise StreamError("after_final")
        try:
            return step()
        except OhttpError as e:
            self._closed = True
            raise _stream_error(e) from e
        except StreamError:
            self._closed = True
            raise

    def _chunk(self, plaintext: bytes, final: bool) -> list[dict[str, Any]]:
        # The BHTTP end in an earlier chunk leaves only padding for this one, so no last event:
        # the checks below refuse it.
        parts = self._bhttp.feed(plaintext) + (self._bhttp.end() if final else [])
        events: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part, Head):
                self._head(part)
            elif isinstance(part, End):
                if part.trailers:
                    raise StreamError("malformed")
            else:
                events += self._content(part)
        if final and (self._line or len(events) != 1 or not self.finished):
            raise StreamError("malformed")  # the final chunk holds exactly the last event
        if not final and self.finished:
            raise StreamError("malformed")  # the last event before the final chunk
        return events

    def _head(self, head: Head) -> None:
        names = [name for name, _ in head.headers]
        if head.informational or len(set(names)) != len(names) or not set(names) <= {b"content-type", b"date"}:
            raise StreamError("malformed")
        fields = dict(head.headers)
        if fields.get(b"content-type") != EVENTS_TYPE:
            raise StreamError("malformed")
        if b"date" in fields:
            try:
                self.date = parse_http_date(fields[b"date"])
            except ValueError as e:
                raise StreamError("malformed") from e
        self.status = head.status

    def _content(self, data: bytes) -> list[dict[str, Any]]:
        """Events completed by `data`: lines, with padding dropped between them."""
        self._line += data
        events = []
        while (newline := self._line.find(b"\n")) >= 0:
            line = bytes(self._line[:newline]).lstrip(b"\x00")
            del self._line[: newline + 1]
            events.append(self._event(line))
        if not self._line.strip(b"\x00"):
            self._line.clear()  # padding only so far
        elif len(self._line.lstrip(b"\x00")) > self._max_event:
            raise StreamError("malformed")
        return events

    def _event(self, line: bytes) -> dict[str, Any]:
        if self.finished:
            raise StreamError("after_final")
        try:
            event = loads_bounded(line, self._max_event, MAX_CHUNK_DEPTH)
        except EncodingError as e:
            raise StreamError("malformed") from e
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise StreamError("malformed")
        checked = checked_chunk(event)
        self.finished = checked["type"] in FINAL_TYPES
        if self.status != 200 and checked["type"] != "error":
            raise StreamError("malformed")  # a refusal carries one error event and nothing else
        return checked
