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
import selectors
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter, thread_time

from .timed_response import SEALED_CHUNK, Response, request

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
# Larger than a TLS record, smaller than malloc's mmap threshold: a 256 KiB buffer made each
# recv cost ~35 us (an mmap and munmap per call) instead of ~5.
RECV_SIZE = 65536


@dataclass
class LoadResult:
    """Per chat (one per stream with `run`; session after session with `sessions`) what came back."""

    arrivals: list[list[float]]  # per chat, time.perf_counter() of each sealed chunk
    statuses: list[int | None]  # per chat, the HTTP status (None: no response, or never sent)
    # by kind: connect, tls, reset, truncated, malformed, deadline, or the router's code for a refusal
    errors: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # this loop's own CPU time, to show the equipment had room
    handshake_seconds: float = 0.0  # the part of it spent in TLS handshakes (one per connection)
    ends: list[float | None] = field(default_factory=list)  # per chat, when its response was whole
    failures: list[str | None] = field(default_factory=list)  # per chat, its error kind, if any
    connections: int = 0  # TLS connections opened: more than the sessions if the router closed some

    @property
    def completed(self) -> int:
        """Chats answered 200 with a whole body (for the router: up to the chunked terminator)."""
        return sum(1 for s, e in zip(self.statuses, self.ends, strict=True) if s == 200 and e is not None)


class Session:
    """Chats over one kept-alive TLS connection, one after another: the next request goes out as
    soon as the previous response is whole, as an app's HTTPS connection would carry them. Never
    blocks. `run` makes a session of one chat per stream.

    When the connection ends, cutting a chat short (reset, truncated, tls, ...) or after a
    response saying `Connection: close` (kept with its own status), a new connection carries
    the session's other chats. Each connection carries at least one chat, so a session never
    opens more connections than it has chats.

    TLS runs over memory BIOs: one recv takes whatever the socket holds, where an SSLSocket
    makes two read calls per record (header, then body)."""

    def __init__(self, load: Load, chats: Sequence[int]) -> None:
        self.load, self.chats = load, chats
        self.sent = 0  # how many of `chats` have gone (the last of them is in flight while connected)
        self.chat: int | None = None  # the chat in flight
        self.response = Response([], load.marker)
        self.sock: socket.socket | None = None
        self.finished = False
        self.new_tls()

    def new_tls(self) -> None:
        """A fresh TLS client for the next connection (made ahead, outside the timed loop for `run`)."""
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = self.load.context.wrap_bio(self.incoming, self.outgoing, server_hostname=self.load.host)
        self.outbox = b""  # TLS bytes the socket has not taken yet
        self.writing = False  # whether the selector waits for the socket to take them
        self.handshaking = True

    def open(self) -> None:
        """Connect, with the session's next chat in flight."""
        self.take()
        self.load.connections += 1
        self.sock = sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock.connect_ex((self.load.host, self.load.port)) not in (0, errno.EINPROGRESS):
            self.fail("connect")
            return
        self.load.selector.register(sock, WRITE, self.connected)

    def take(self) -> None:
        self.chat = chat = self.chats[self.sent]
        self.sent += 1
        self.response = Response(self.load.arrivals[chat], self.load.marker)

    def connected(self, mask: int) -> None:
        assert self.sock is not None
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.fail("connect")
            return
        self.load.selector.modify(self.sock, READ, self.on_event)
        self.handshake()

    def on_event(self, mask: int) -> None:
        assert self.sock is not None
        if mask & WRITE:
            self.flush()
        if not mask & READ or self.sock is None:
            return
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.fail("reset")
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
            self.fail("tls")
            return
        finally:
            self.load.handshake_cpu += thread_time() - cpu
        if not self.handshaking:
            self.send()
        else:
            self.flush()

    def send(self) -> None:
        assert self.chat is not None
        self.tls.write(self.load.requests[self.chat])
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
            self.fail("reset")
            return
        self.outbox = self.outbox[sent:]
        if self.writing != bool(self.outbox):  # one epoll_ctl less per chat when nothing changes
            self.writing = bool(self.outbox)
            self.load.selector.modify(self.sock, READ | WRITE if self.writing else READ, self.on_event)

    def receive(self, now: float) -> None:
        """Feed every whole TLS record received to the response reader."""
        try:
            while self.incoming.pending:
                if self.response.feed(self.tls.read(RECV_SIZE), now):
                    self.complete(now)
                    return
        except ssl.SSLWantReadError:  # the rest of a record is still on its way
            pass
        except ssl.SSLZeroReturnError:  # the router closed TLS: the socket's end follows
            pass
        except ssl.SSLError:
            self.fail("tls")
        except ValueError:  # not HTTP as this reader knows it
            self.fail("malformed")

    def complete(self, now: float) -> None:
        """The response in flight is whole: record it, then send the next chat on the same
        connection unless the router is closing it."""
        response = self.response
        self.load.record(self.chat, response.status, now, None if response.status == 200 else response.error_code())
        self.chat = None
        if self.sent < len(self.chats) and not response.close:
            self.take()
            self.send()
        else:
            self.hang_up()

    def end_of_file(self) -> None:
        response = self.response
        if response.status is not None and response.status != 200 and response.length is None and not response.chunked:
            response.close = True
            self.complete(self.load.now)  # a close-delimited refusal
        else:
            self.fail("truncated")

    def fail(self, error: str) -> None:
        """The connection is lost, and with it the chat in flight."""
        self.load.record(self.chat, self.response.status, None, error)
        self.chat = None
        self.hang_up()

    def hang_up(self) -> None:
        """Close this connection; have the loop open another if chats are left (not from here:
        a router refusing every connection would otherwise recurse once per chat)."""
        self.close()
        if self.sent < len(self.chats):
            self.new_tls()
            self.load.reopen.append(self)
        else:
            self.finished = True
            self.load.active -= 1

    def close(self) -> None:
        if self.sock is not None:
            if self.sock in self.load.selector.get_map():
                self.load.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None


class Load:
    """The loop: opens sessions on their start times, runs them until all are done or time is up.

    At the deadline a chat in flight counts as a `deadline` error; chats not sent yet stay
    untouched (no status, no error)."""

    def __init__(
        self, host: str, port: int, cert_pem: bytes, path: str, marker: bytes, bodies: Sequence[bytes]
    ) -> None:
        self.host, self.port, self.path, self.marker = host, port, path, marker
        self.context = ssl.create_default_context(cadata=cert_pem.decode())
        self.selector = selectors.DefaultSelector()
        self.requests = [request(host, port, b, path) for b in bodies]  # built before the clock starts
        self.arrivals: list[list[float]] = [[] for _ in bodies]
        self.statuses: list[int | None] = [None] * len(bodies)
        self.ends: list[float | None] = [None] * len(bodies)
        self.failures: list[str | None] = [None] * len(bodies)
        self.errors: dict[str, int] = {}
        self.active = 0  # sessions opened and not finished
        self.reopen: list[Session] = []  # sessions whose connection ended with chats left
        self.connections = 0
        self.handshake_cpu = 0.0
        self.now = 0.0

    def record(self, chat: int | None, status: int | None, end: float | None, error: str | None) -> None:
        if chat is None:  # a connection lost between chats: nothing was in flight
            return
        self.statuses[chat], self.ends[chat], self.failures[chat] = status, end, error
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1

    def run(self, chats: Sequence[Sequence[int]], starts: Sequence[float], deadline: float) -> LoadResult:
        """Open session i (carrying the chats `chats[i]`) at `starts[i]` seconds from now."""
        due = sorted(((s, Session(self, c)) for c, s in zip(chats, starts, strict=True) if c), key=lambda d: d[0])
        t0, cpu = perf_counter(), thread_time()
        end, opened = t0 + deadline, 0
        while (opened < len(due) or self.active) and (now := perf_counter()) < end:
            while opened < len(due) and t0 + due[opened][0] <= now:
                self.active += 1
                due[opened][1].open()
                opened += 1
            while self.reopen:
                self.reopen.pop().open()
            wake = min(end, t0 + due[opened][0]) if opened < len(due) else end
            ready = self.selector.select(max(0.0, wake - now))
            self.now = perf_counter()  # when these events arrived: the time of every chunk they bring
            for key, mask in ready:
                key.data(mask)
        for _, session in due:
            if session.sock is not None:
                self.record(session.chat, session.response.status, None, "deadline")
                session.close()
        self.selector.close()
        return LoadResult(
            self.arrivals,
            self.statuses,
            self.errors,
            cpu_seconds=thread_time() - cpu,
            handshake_seconds=self.handshake_cpu,
            ends=self.ends,
            failures=self.failures,
            connections=self.connections,
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
    load = Load(host, port, cert_pem, path, marker, bodies)
    return load.run([[i] for i in range(len(bodies))], starts, deadline)


def sessions(
    host: str,
    port: int,
    cert_pem: bytes,
    bodies: Sequence[Sequence[bytes]],
    deadline: float,
    path: str = "/api/chat",
    marker: bytes = SEALED_CHUNK,
) -> LoadResult:
    """Open one kept-alive connection per list in `bodies`, all at once, and post its bodies
    one after another; stop when all are answered or `deadline` seconds have passed. The
    result's per-chat lists run session after session, in the order of `bodies`."""
    flat = [body for session in bodies for body in session]
    chats, first = [], 0
    for session in bodies:
        chats.append(range(first, first + len(session)))
        first += len(session)
    return Load(host, port, cert_pem, path, marker, flat).run(chats, [0.0] * len(chats), deadline)
