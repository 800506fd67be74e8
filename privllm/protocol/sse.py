"""Server-Sent Events, sans-IO: an incremental parser (any split point) and an encoder."""

from __future__ import annotations

from typing import NamedTuple

from .errors import ProtocolError

__all__ = ["KEEPALIVE", "SSEError", "SSEEvent", "SSEParser", "encode_event"]

KEEPALIVE = b": keepalive\n\n"


class SSEEvent(NamedTuple):  # a tuple: made once per streamed delta, cheaply
    event: str
    data: str


class SSEError(ProtocolError):
    """The stream broke the SSE grammar or a size limit."""

    code = "malformed_sse"


def encode_event(event: str, data: str) -> bytes:
    if "\n" in data or "\r" in data or "\n" in event or "\r" in event:
        raise ValueError("one line of data per event")
    return f"event: {event}\ndata: {data}\n\n".encode()


class SSEParser:
    """Feed bytes as they arrive; get complete events back (WHATWG event-stream rules)."""

    def __init__(self, max_line: int = 1 << 20, max_event: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._max_line = max_line
        self._max_event = max_event
        self._skip_lf = False  # a CR ended the previous line; a following LF belongs to it
        self._fast_limit = min(max_line, max_event)  # a one-line event this short needs no size checks

    def feed(self, data: bytes) -> list[SSEEvent]:
        self._buffer += data
        events: list[SSEEvent] = []
        if self._skip_lf or b"\r" in self._buffer:
            lines = self._split_any()
        else:  # the usual case, and the hot path of every streamed delta: LF line ends only
            if not (self._event or self._data):
                events = self._whole_events()
                if not self._buffer:
                    return events
            end = self._buffer.rfind(b"\n")
            lines = bytes(self._buffer[:end]).split(b"\n") if end != -1 else []
            del self._buffer[: end + 1]
        if len(self._buffer) > self._max_line:
            raise SSEError("line too long")
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _whole_events(self) -> list[SSEEvent]:
        """Every event the buffer holds whole, starting between events (LF line ends only).
        One `data: ...` line is an event at once, as an upstream delta always is."""
        end = self._buffer.rfind(b"\n\n")
        if end == -1:
            return []
        blocks = bytes(self._buffer[:end]).split(b"\n\n")
        del self._buffer[: end + 2]
        events = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block and len(block) < self._fast_limit:
                try:
                    events.append(SSEEvent("message", block[6:].decode("utf-8")))
                except UnicodeDecodeError as e:
                    raise SSEError("not UTF-8") from e
                continue
            for line in [*block.split(b"\n"), b""]:  # the blank line that ended the block dispatches
                event = self._line(line)
                if event is not None:
                    events.append(event)
        return events

    def _split_any(self) -> list[bytes]:
        """Complete lines ended by CRLF, LF or CR (a CR at the very end may own the next LF)."""
        lines = []
        start = 0
        buf = self._buffer
        while start < len(buf):
            if self._skip_lf:
                self._skip_lf = False
                if buf[start] == 0x0A:
                    start += 1
                    continue
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            end = lf if cr == -1 else cr if lf == -1 else min(cr, lf)
            if end == -1:
                break
            lines.append(bytes(buf[start:end]))
            self._skip_lf = buf[end] == 0x0D
            start = end + 1
        del buf[:start]
        return lines

    def _line(self, raw: bytes) -> SSEEvent | None:
        if len(raw) > self._max_line:
            raise SSEError("line too long")
        if not raw:
            return self._dispatch()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SSEError("not UTF-8") from e
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._size += len(value) + 1
            if self._size > self._max_event:
                raise SSEError("event too large")
            self._data.append(value)
        # id, retry and unknown fields carry nothing this protocol uses.
        return None

    def _dispatch(self) -> SSEEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data, self._size = "", [], 0
        if not data:
            return None
        return SSEEvent(event, "\n".join(data))
