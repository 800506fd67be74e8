"""
The request-read deadline (point 8): from accept, again after each answer on a kept-alive
connection, the same for HTTP/2, and never while an answer is being written.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
from h2.exceptions import StreamClosedError
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import http
from twisted.web._http2 import H2Connection
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..web.deadline import ReadDeadline
from ..web.request import PrivllmSite

DEADLINE = 5.0
GET = b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n"


class Quick(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"


class Held(Resource):
    """An answer that lasts as long as the test wants: a stand-in for a long SSE stream."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        request.write(b"data: first\n\n")
        return NOT_DONE_YET


class Core(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[int] = []
        self.deadline = ReadDeadline(self.clock, DEADLINE)
        self.deadline.start(lambda: self.expired.append(1))

    def test_runs_from_start(self) -> None:
        self.clock.advance(DEADLINE - 0.01)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.01)
        self.assertEqual(self.expired, [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_off_while_answering_and_again_after(self) -> None:
        self.clock.advance(1)
        self.deadline.read()
        self.deadline.read()  # HTTP/2: two streams answered at once
        self.clock.advance(100)
        self.deadline.answered()
        self.clock.advance(100)
        self.assertEqual(self.expired, [])
        self.deadline.answered()
        self.clock.advance(DEADLINE - 0.01)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.01)
        self.assertEqual(self.expired, [1])

    def test_stop_cancels_for_good(self) -> None:
        self.deadline.read()
        self.deadline.stop()
        self.deadline.answered()
        self.clock.advance(100)
        self.assertEqual((self.expired, self.clock.getDelayedCalls()), ([], []))


class Transport(StringTransport):
    def __init__(self, protocol: bytes = b"http/1.1") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        self.negotiatedProtocol = protocol

    @property
    def closed(self) -> bool:
        return bool(self.disconnecting or self.disconnected)


def connect(clock: Clock, transport: Transport) -> tuple[Any, Any, Transport]:
    """A site with a quick and a held resource, one connection to it over `transport`.
    The idle timeout is far away: only the read deadline can close the connection."""
    root: Any = Resource()
    root.putChild(b"quick", Quick())
    held = Held()
    root.putChild(b"held", held)
    site = PrivllmSite(root, 4096, reactor=clock, idle_timeout=3600, request_read_timeout=DEADLINE)
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    protocol.makeConnection(transport)
    return held, protocol, transport


class HTTP11(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.held, self.protocol, self.transport = connect(self.clock, Transport())

    def trickle(self, data: bytes, every: float = 1.0) -> None:
        for byte in data:
            if self.transport.closed:
                return
            self.protocol.dataReceived(bytes([byte]))
            self.clock.advance(every)

    def test_nothing_sent(self) -> None:
        self.clock.advance(DEADLINE - 0.01)
        self.assertFalse(self.transport.closed)
        self.clock.advance(0.01)
        self.assertTrue(self.transport.disconnected, "aborted, not closed politely")

    def test_request_line_trickled_one_byte_a_second(self) -> None:
        self.trickle(b"GET /quick HTTP/1.1")  # no newline: Twisted has no request yet
        self.assertTrue(self.transport.closed)
        self.assertEqual(self.clock.seconds(), DEADLINE)

    def test_idle_after_a_kept_alive_answer(self) -> None:
        self.clock.advance(DEADLINE - 1)
        self.protocol.dataReceived(GET)
        self.assertIn(b"200 OK", self.transport.value())
        self.clock.advance(DEADLINE - 0.01)
        self.assertFalse(self.transport.closed, "a new deadline from the answer")
        self.clock.advance(0.01)
        self.assertTrue(self.transport.closed)

    def test_next_request_trickled_after_an_answer(self) -> None:
        self.protocol.dataReceived(GET)
        self.trickle(GET)
        self.assertEqual(self.transport.value().count(b"200 OK"), 1)
        self.assertTrue(self.transport.closed)
        self.assertEqual(self.clock.seconds(), DEADLINE)

    def test_pipelined_requests_answered_then_deadline(self) -> None:
        self.protocol.dataReceived(GET * 3)
        self.assertEqual(self.transport.value().count(b"200 OK"), 3)
        self.clock.advance(DEADLINE)
        self.assertTrue(self.transport.closed)

    def test_long_answer_never_cut(self) -> None:
        self.protocol.dataReceived(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        (request,) = self.held.requests
        for _ in range(100):
            self.clock.advance(DEADLINE)
            request.write(b"data: more\n\n")
        self.assertFalse(self.transport.closed)
        request.finish()
        self.clock.advance(DEADLINE)
        self.assertTrue(self.transport.closed)

    def test_gone_client_leaves_no_timer(self) -> None:
        self.protocol.dataReceived(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HTTP2(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        # Twisted builds the HTTP/2 connection on the global reactor; run it on this clock.
        self.patch(http, "H2Connection", lambda: H2Connection(self.clock))
        self.held, self.protocol, self.transport = connect(self.clock, Transport(b"h2"))
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.client.initiate_connection()

    def send(self, trickle: bool = False) -> None:
        data = self.client.data_to_send()
        pieces = [data[i : i + 1] for i in range(len(data))] if trickle else [data]
        for piece in pieces:
            if self.transport.closed:
                return
            self.protocol.dataReceived(piece)
            self.clock.advance(1 if trickle else 0)

    def events(self) -> list[Any]:
        events = self.client.receive_data(self.transport.value())
        self.transport.clear()
        return events

    def headers(self, stream: int, path: bytes, end: bool = True) -> None:
        fields = [(b":method", b"GET" if end else b"POST"), (b":path", path), (b":scheme", b"https")]
        self.client.send_headers(stream, [*fields, (b":authority", b"x")], end_stream=end)

    def test_negotiated_and_silent(self) -> None:
        self.clock.advance(DEADLINE)
        self.assertTrue(self.transport.closed)

    def test_headers_frame_trickled(self) -> None:
        self.send()  # the preface and settings, at once
        self.headers(1, b"/quick")
        self.send(trickle=True)
        self.assertTrue(self.transport.closed)
        self.assertEqual(self.clock.seconds(), DEADLINE)

    def test_idle_after_an_answer(self) -> None:
        self.send()
        self.headers(1, b"/quick")
        self.send()
        self.clock.advance(0)
        self.assertIn(h2.events.StreamEnded, [type(e) for e in self.events()])
        self.clock.advance(DEADLINE - 0.01)
        self.assertFalse(self.transport.closed)
        self.clock.advance(0.01)
        self.assertTrue(self.transport.closed)

    def test_long_answer_never_cut_but_a_trickled_body_is(self) -> None:
        self.send()
        self.headers(1, b"/held")
        self.send()
        self.headers(3, b"/held", end=False)  # a body that never ends, beside the long answer
        self.send()
        self.client.send_data(3, b"x")
        self.send()
        for _ in range(10):
            self.clock.advance(1)
            self.held.requests[0].write(b"data: more\n\n")
        self.assertFalse(self.transport.closed)
        self.assertIn(3, [e.stream_id for e in self.events() if isinstance(e, h2.events.StreamReset)])
        self.clock.advance(100)
        self.assertFalse(self.transport.closed)
        self.held.requests[0].finish()
        self.clock.advance(DEADLINE)
        self.assertTrue(self.transport.closed)


class BodyBudgetPerConnection(TestCase):
    """HTTP/2 multiplexes 100 streams: unbounded, one connection held 100 bodies (25 MiB here)."""

    def test_bodies_arriving_on_one_connection_are_bounded(self) -> None:
        clock = Clock()
        max_body = 262144
        self.patch(http, "H2Connection", lambda: H2Connection(clock))
        site = PrivllmSite(Resource(), max_body, reactor=clock, idle_timeout=60, request_read_timeout=15)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = Transport(b"h2")
        protocol.makeConnection(transport)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()

        def pump() -> None:
            if not transport.closed:
                protocol.dataReceived(client.data_to_send())
                client.receive_data(transport.value())
                transport.clear()

        pump()
        streams = [1 + 2 * i for i in range(100)]
        for stream in streams:
            head = [(b":method", b"POST"), (b":path", b"/api/chat"), (b":scheme", b"https"), (b":authority", b"x")]
            client.send_headers(stream, head)
        pump()
        left = dict.fromkeys(streams, max_body - 1)  # each body one byte short of the limit, never ended
        most, reset = 0, set()
        for _ in range(1000):
            progressed = False
            for stream in streams:
                n = min(left[stream], client.local_flow_control_window(stream), client.max_outbound_frame_size)
                if n > 0 and stream not in reset:
                    try:
                        client.send_data(stream, b"x" * n)
                    except StreamClosedError:
                        reset.add(stream)  # the router reset it: past the connection's budget
                        continue
                    left[stream] -= n
                    progressed = True
            pump()
            channel: Any = protocol.wrapped._channel
            most = max(most, sum(len(s._request.content.getvalue()) for s in channel.streams.values()))
            if not progressed:
                break
        self.assertLessEqual(most, 4 * max_body)
        self.assertGreater(len(reset), 90, "streams past the budget are reset")
