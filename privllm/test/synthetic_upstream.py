"""
Test equipment: the one synthetic upstream, for the benchmarks and the end-to-end tests. It
speaks llama-server's streaming chat format on a UNIX socket and emits deltas at a chosen rate,
so the model is not the bottleneck when the router's own capacity is measured; it can also cut
every answer after its deltas (a node failing mid-answer), and replay recorded events on
`/completion` (a llama-server for gpt-oss), keeping the prompts it was sent.

It is one selectors loop without Twisted, so that it and the load generator fit on one
core at 20,000 deltas/s: every delta is one `send` of a prebuilt HTTP chunk, and all
streams share one timer queue. HTTP/1.1 with keep-alive, as the router's client expects
(answers are always chunked, as to an HTTP/1.1 client).

    python -m privllm.test.synthetic_upstream SOCKET --rate 20 --deltas 40

Tests run it on a thread of their own process (`start`, then `stop`) to read what it saw.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import threading
import time
from collections import deque
from typing import Any

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
HEALTH = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"status":"ok"}'
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk, built once and sent many times."""
    return b"%x\r\n%s\r\n" % (len(data), data)


DELTA = chunk(event({"choices": [{"delta": {"content": " word"}, "finish_reason": None}]}))


def ending(deltas: int) -> bytes:
    """The finish events llama-server sends after the last delta, then the end of the chunked body."""
    stop = event({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    usage = event({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": deltas}})
    return chunk(stop + usage + b"data: [DONE]\n\n") + b"0\r\n\r\n"


def chunked_body(buffer: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at `pos` and where it ends (after any trailers); None while incomplete."""
    body = b""
    while True:
        eol = buffer.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buffer[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = buffer.find(b"\r\n\r\n", pos - 2)
            return None if end < 0 else (body, end + 4)
        body += buffer[pos : pos + size]
        pos += size + 2
        if pos > len(buffer):
            return None


def parse_request(buffer: bytes) -> tuple[bytes, bytes, bytes, int, bool] | None:
    """(method, path, body, bytes used, keep-alive) once a whole request is in `buffer`.

    Raises ValueError when the request is malformed."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].split(b"\r\n")
    method, path, version = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if b"chunked" in headers.get(b"transfer-encoding", b""):
        whole = chunked_body(buffer, end + 4)
        if whole is None:
            return None
        body, used = whole
    else:
        used = end + 4 + int(headers.get(b"content-length", b"0"))
        if len(buffer) < used:
            return None
        body = buffer[end + 4 : used]
    keep_alive = version == b"HTTP/1.1" and headers.get(b"connection") != b"close"
    return method, path.split(b"?")[0], body, used, keep_alive


class Connection:
    """One connection from the router: its requests in turn, and what the socket would not take yet."""

    def __init__(self, upstream: Upstream, sock: socket.socket) -> None:
        self.upstream, self.sock = upstream, sock
        self.inbox = b""
        self.outbox = bytearray()
        self.streaming = self.closed = self.close_when_sent = False
        upstream.selector.register(sock, READ, self.on_event)

    def on_event(self, mask: int) -> None:
        if mask & WRITE:
            self.flush()
        if mask & READ and not self.closed:
            self.receive()

    def receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the router went away, perhaps mid-stream: its queued deltas are dropped
            self.close()
            return
        self.inbox += data
        self.serve()

    def serve(self) -> None:
        """Answer the requests waiting in the inbox, one at a time (a stream holds the connection)."""
        while not self.streaming and not self.closed and self.inbox:
            try:
                request = parse_request(self.inbox)
            except ValueError:
                self.write(BAD_REQUEST)
                self.end(keep_alive=False)
                return
            if request is None:
                return
            method, path, body, used, keep_alive = request
            self.inbox = self.inbox[used:]
            if method == b"POST" and path == b"/v1/chat/completions":
                self.upstream.requests += 1
                self.streaming, self.close_when_sent = True, not keep_alive
                self.write(STREAM_HEAD)
                self.upstream.step(time.perf_counter(), self, self.upstream.deltas)
            elif method == b"POST" and path == b"/completion" and self.upstream.replay is not None:
                self.upstream.prompts.append(json.loads(body)["prompt"])
                self.write(replayed(self.upstream.replay))
                self.end(keep_alive)
            else:
                self.write(HEALTH if method == b"GET" and path == b"/health" else NOT_FOUND)
                self.end(keep_alive)

    def end(self, keep_alive: bool) -> None:
        """One response is whole: close if asked, else serve a request that came meanwhile."""
        self.streaming = False
        if not keep_alive:
            self.close_when_sent = True
            if not self.outbox:
                self.close()
        elif self.inbox:
            self.serve()

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.outbox:
            self.outbox += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.outbox += data[sent:]
            self.upstream.selector.modify(self.sock, READ | WRITE, self.on_event)

    def flush(self) -> None:
        try:
            sent = self.sock.send(self.outbox)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self.outbox[:sent]
        if not self.outbox:
            if self.close_when_sent and not self.streaming:
                self.close()
            else:
                self.upstream.selector.modify(self.sock, READ, self.on_event)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.upstream.selector.unregister(self.sock)
            self.sock.close()


def replayed(events: bytes) -> bytes:
    """One whole `/completion` answer: the recorded events, with their length."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(events)
    return head + events


class Upstream:
    """The server loop. All streams share one period, so a FIFO of (due, connection, deltas left)
    stays in time order: each delta is a popleft, a send and an append, whatever the count.

    `cut` ends every chat by closing the connection after its deltas instead of finishing it;
    `replay` is what `POST /completion` answers. `requests` counts chats, `prompts` keeps the
    prompts `/completion` was sent."""

    def __init__(
        self, listener: socket.socket, rate: float, deltas: int, cut: bool = False, replay: bytes | None = None
    ) -> None:
        self.listener, self.period, self.deltas = listener, 1.0 / rate, deltas
        self.cut, self.replay = cut, replay
        self.requests = 0
        self.prompts: list[list[int]] = []
        self.ending = ending(deltas)
        self.due: deque[tuple[float, Connection, int]] = deque()
        self.selector = selectors.DefaultSelector()
        listener.setblocking(False)
        self.selector.register(listener, READ, self.accept)
        self.running = True
        self.wake, self.waker = socket.socketpair()  # `stop` from another thread ends `select`
        self.selector.register(self.wake, READ, self.on_stop)
        self.thread: threading.Thread | None = None

    def accept(self, mask: int) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            Connection(self, sock)

    def step(self, due: float, connection: Connection, left: int) -> None:
        """Send one delta and queue the next one period later (keeping the stream's phase), or finish."""
        if left:
            connection.write(DELTA)
            self.due.append((due + self.period, connection, left - 1))
        elif self.cut:
            connection.close()  # mid-answer: no finish events, no end of the chunked body
        else:
            connection.write(self.ending)
            connection.end(keep_alive=not connection.close_when_sent)

    def run(self) -> None:
        due, select, clock = self.due, self.selector.select, time.perf_counter
        while self.running:
            timeout = max(0.0, due[0][0] - clock()) if due else None
            for key, mask in select(timeout):
                key.data(mask)
            now = clock()
            while due and due[0][0] <= now:
                when, connection, left = due.popleft()
                if not connection.closed:
                    self.step(when, connection, left)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()

    def on_stop(self, mask: int) -> None:
        self.running = False

    def start(self) -> Upstream:
        """Serve on a thread of this process, for a test that reads `requests` or `prompts`."""
        self.thread = threading.Thread(target=self.run, name="synthetic-upstream", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """End the loop and close every socket, the listener's included (bounded wait)."""
        self.waker.send(b"x")
        if self.thread is not None:
            self.thread.join(10)
        self.waker.close()


def listen(path: str) -> socket.socket:
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4096)
    return listener


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("socket")
    p.add_argument("--rate", type=float, default=20.0, help="deltas per second per stream")
    p.add_argument("--deltas", type=int, default=40, help="deltas per answer")
    args = p.parse_args()
    Upstream(listen(args.socket), args.rate, args.deltas).run()


if __name__ == "__main__":
    main()
