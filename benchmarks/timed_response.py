"""
Test equipment: a sans-IO reader of one HTTP/1.1 response for benchmarks.loadgen. It notes
the status, the time each SSE event of interest arrived (by default a sealed `event: chunk`,
not opened), and the response's end, with chunked, Content-Length and close-delimited
bodies; and the request the load generator sends, as PrivllmClient.post would.
"""

from __future__ import annotations

import json

SEALED_CHUNK = b"event: chunk"  # how an event the load generator times begins, by default


def request(host: str, port: int, body: bytes, path: str = "/api/chat") -> bytes:
    """The request PrivllmClient.post sends: same path and headers."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Response:
    """Sans-IO reader of one HTTP/1.1 response: its status, when each `event: chunk` came, its end.

    Chunked, Content-Length and close-delimited bodies; a 200 body is read as SSE events, any
    other is kept whole for its error code."""

    def __init__(self, arrivals: list[float], marker: bytes = SEALED_CHUNK) -> None:
        self.arrivals = arrivals
        self.marker = marker  # the start of the events to time
        self.status: int | None = None
        self.chunked = False
        self.length: int | None = None  # identity body bytes still to come, if announced
        self.buffer = b""  # head or chunk framing not yet complete
        self.left = 0  # data bytes left in the current HTTP chunk
        self.events = b""  # SSE bytes not yet ended by a blank line
        self.body = b""  # the body of a refusal
        self.trailers = False  # past the last chunk: trailer lines, up to an empty one
        self.close = False  # the router will close the connection after this response
        self.done = False

    def feed(self, data: bytes, now: float) -> bool:
        """Take bytes as they arrive; True once the response is complete."""
        if (
            self.status == 200
            and self.chunked
            and not (self.buffer or self.left or self.events)
            and self.one(data, now)
        ):
            return False
        buf = self.buffer + data if self.buffer else data
        self.buffer = b""
        if self.status is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buf
                return False
            self.head(buf[:end])
            buf = buf[end + 4 :]
        if self.chunked:
            self.dechunk(buf, now)
        elif buf:
            self.payload(buf, now)
            if self.length is not None:
                self.length -= len(buf)
                self.done = self.length <= 0
        return self.done

    def one(self, data: bytes, now: float) -> bool:
        """The common case, checked in a few C calls: exactly one whole HTTP chunk holding one
        whole SSE event. False (nothing taken) for anything else."""
        eol = data.find(b"\r\n")
        if not 0 < eol < 8 or not data.endswith(b"\n\n\r\n"):
            return False
        end = eol + 2 + int(data[:eol], 16)  # where the event's data ends
        if len(data) != end + 2 or data.find(b"\n\n", eol) != end - 2:
            return False
        if data.startswith(self.marker, eol + 2):
            self.arrivals.append(now)
        return True

    def head(self, raw: bytes) -> None:
        lines = raw.split(b"\r\n")
        self.status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        self.chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        self.close = headers.get(b"connection") == b"close"
        if not self.chunked and b"content-length" in headers:
            self.length = int(headers[b"content-length"])
            self.done = self.length == 0

    def dechunk(self, buf: bytes, now: float) -> None:
        """Strip the chunked framing; a chunk's closing CRLF reads as an empty line before the next size.

        The response ends at the empty line after the last chunk (and its trailers, if any), not
        at the last chunk's size: on a kept-alive connection a CRLF left over would be read as the
        start of the next response."""
        pieces = []
        pos, size = 0, len(buf)
        while pos < size:
            if self.left:
                end = min(size, pos + self.left)
                pieces.append(buf[pos:end])
                self.left -= end - pos
                pos = end
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if self.trailers:
                if eol == pos:
                    self.done = True
                    break
            elif eol > pos:
                self.left = int(buf[pos:eol].split(b";")[0], 16)
                self.trailers = not self.left  # the last chunk
            pos = eol + 2
        self.buffer = buf[pos:] if pos < size and not self.done else b""
        if pieces:
            self.payload(pieces[0] if len(pieces) == 1 else b"".join(pieces), now)

    def payload(self, data: bytes, now: float) -> None:
        if self.status != 200:
            self.body += data
            return
        events = self.events + data if self.events else data
        start = 0
        while (end := events.find(b"\n\n", start)) >= 0:
            if events.startswith(self.marker, start):
                self.arrivals.append(now)
            start = end + 2
        self.events = events[start:]

    def error_code(self) -> str:
        """The router's JSON error code of a refusal, as PrivllmClient would raise it."""
        try:
            return str(json.loads(self.body)["error"])
        except (ValueError, KeyError, TypeError):
            return str(self.status)
