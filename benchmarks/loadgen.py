"""
Test equipment: a lean load generator for `benchmarks.capacity --light`. Each stream is one
TLS connection that posts one pre-sealed chat request and timestamps every sealed chunk of
the answer as it arrives, without opening it. All streams run on one selectors loop without
Twisted, so that one core can take in ~20,000 chunks/s beside the synthetic upstream (about
30 us of CPU per chunk and 1 ms per TLS handshake on the 2-core development machine).

`sessions` instead sends several chats one after another on each kept-alive connection, as
an app's HTTPS connection carries them, to count new short chats per second: a TLS handshake
per chat would measure handshakes, not chats.

`benchmarks.plain_proxy` uses it too, with nginx's path and the upstream's plain events.

A stream that ends with a sealed error chunk counts as completed: telling it apart would
mean opening the chunks. The verifying client (one stream per level) checks the content.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter, thread_time

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
# Larger than a TLS record, smaller than malloc's mmap threshold: a 256 KiB buffer made each
# recv cost ~35 us (an mmap and munmap per call) instead of ~5.
RECV_SIZE = 65536
SEALED_CHUNK = b"event: chunk"  # how an event the load generator times begins, by default


@dataclass
class LoadResult:
    arrivals: list[list[float]]  # per stream, time.perf_counter() of each sealed chunk
    statuses: list[int | None]  # per stream, the HTTP status (None: no response)
    # by kind: connect, tls, reset, truncated, malformed, deadline, or the router's code for a refusal
    errors: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # this loop's own CPU time, to show the equipment had room
    handshake_seconds: float = 0.0  # the part of it spent in TLS handshakes (one per stream)


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
        if not self.chunked and b"content-length" in headers:
            self.length = int(headers[b"content-length"])
            self.done = self.length == 0

    def dechunk(self, buf: bytes, now: float) -> None:
        """Strip the chunked framing; a chunk's closing CRLF reads as an empty line before the next size."""
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
            if eol > pos:
                self.left = int(buf[pos:eol].split(b";")[0], 16)
                if not self.left:  # the last chunk: trailers, if any, are not waited for
                    self.done = True
                    break
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


class Stream:
    """One chat over its own TLS connection: connect, handshake, send, read; never blocks.

    TLS runs over memory BIOs: one recv takes whatever the socket holds, where an SSLSocket
    makes two read calls per record (header, then body)."""

    def __init__(self, load: Load, payload: bytes, arrivals: list[float]) -> None:
        self.load, self.request = load, payload
        self.response = Response(arrivals, load.marker)
        self.sock: socket.socket | None = None
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = load.context.wrap_bio(self.incoming, self.outgoing, server_hostname=load.host)
        self.outbox = b""  # TLS bytes the socket has not taken yet
        self.handshaking = True
        self.finished = False

    def open(self) -> None:
        self.sock = sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.load.active += 1
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock.connect_ex((self.load.host, self.load.port)) not in (0, errno.EINPROGRESS):
            self.finish("connect")
            return
        self.load.selector.register(sock, WRITE, self.connected)

    def connected(self, mask: int) -> None:
        assert self.sock is not None
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.finish("connect")
            return
        self.load.selector.modify(self.sock, READ, self.on_event)
        self.handshake()

    def on_event(self, mask: int) -> None:
        assert self.sock is not None
        if mask & WRITE:
            self.flush()
        if not mask & READ or self.finished:
            return
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.finish("reset")
            return
        if not data:
            self.end_of_file()
            return
        self.incoming.write(data)
        if self.handshaking:
            self.handshake()
        else:
            self.receive(self.load.now)

    def handshake(self) -> None:
        cpu = thread_time()
        try:
            self.tls.do_handshake()
            self.handshaking = False
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            self.finish("tls")
            return
        finally:
            self.load.handshake_cpu += thread_time() - cpu
        if not self.handshaking:
            self.tls.write(self.request)
        self.flush()

    def flush(self) -> None:
        """Send what TLS has produced; wait for the socket to drain if it will not take it all."""
        assert self.sock is not None
        self.outbox += self.outgoing.read()
        if not self.outbox:
            return
        try:
            sent = self.sock.send(self.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.finish("reset")
            return
        self.outbox = self.outbox[sent:]
        self.load.selector.modify(self.sock, READ | WRITE if self.outbox else READ, self.on_event)

    def receive(self, now: float) -> None:
        """Feed every whole TLS record received to the response reader."""
        try:
            while self.incoming.pending:
                if self.response.feed(self.tls.read(RECV_SIZE), now):
                    self.finish(None if self.response.status == 200 else self.response.error_code())
                    return
        except ssl.SSLWantReadError:  # the rest of a record is still on its way
            pass
        except ssl.SSLZeroReturnError:  # the router closed TLS: the socket's end follows
            pass
        except ssl.SSLError:
            self.finish("tls")
        except ValueError:  # not HTTP as this reader knows it
            self.finish("malformed")

    def end_of_file(self) -> None:
        response = self.response
        if response.status is not None and response.status != 200 and response.length is None and not response.chunked:
            self.finish(response.error_code())  # a close-delimited refusal
        else:
            self.finish("truncated")

    def finish(self, error: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        if error is not None:
            self.load.errors[error] = self.load.errors.get(error, 0) + 1
        if self.sock is not None:
            self.load.active -= 1
            if self.sock in self.load.selector.get_map():
                self.load.selector.unregister(self.sock)
            self.sock.close()


class Load:
    """The loop: opens streams on their start times, runs them until all are done or time is up."""

    def __init__(self, host: str, port: int, cert_pem: bytes, path: str, marker: bytes) -> None:
        self.host, self.port, self.path, self.marker = host, port, path, marker
        self.context = ssl.create_default_context(cadata=cert_pem.decode())
        self.selector = selectors.DefaultSelector()
        self.errors: dict[str, int] = {}
        self.active = 0
        self.handshake_cpu = 0.0
        self.now = 0.0

    def run(self, bodies: Sequence[bytes], starts: Sequence[float], deadline: float) -> LoadResult:
        arrivals: list[list[float]] = [[] for _ in bodies]
        streams = [
            Stream(self, request(self.host, self.port, b, self.path), a) for b, a in zip(bodies, arrivals, strict=True)
        ]
        order = sorted(range(len(streams)), key=lambda i: starts[i])
        t0, cpu = perf_counter(), thread_time()
        end, opened = t0 + deadline, 0
        while (opened < len(order) or self.active) and (now := perf_counter()) < end:
            while opened < len(order) and t0 + starts[order[opened]] <= now:
                streams[order[opened]].open()
                opened += 1
            wake = min(end, t0 + starts[order[opened]]) if opened < len(order) else end
            ready = self.selector.select(max(0.0, wake - now))
            self.now = perf_counter()  # when these events arrived: the time of every chunk they bring
            for key, mask in ready:
                key.data(mask)
        for stream in streams:
            if not stream.finished:
                stream.finish("deadline")
        self.selector.close()
        return LoadResult(
            arrivals, [s.response.status for s in streams], self.errors, thread_time() - cpu, self.handshake_cpu
        )


def run(
    host: str,
    port: int,
    cert_pem: bytes,
    bodies: Sequence[bytes],
    starts: Sequence[float],
    deadline: float,
    path: str = "/api/chat",
    marker: bytes = SEALED_CHUNK,
) -> LoadResult:
    """Post `bodies[i]` to `path` at `starts[i]` seconds from now, each on its own TLS connection
    (verified against the self-signed `cert_pem`), timing the events that begin with `marker`;
    give up on whatever runs past `deadline`."""
    return Load(host, port, cert_pem, path, marker).run(bodies, starts, deadline)
