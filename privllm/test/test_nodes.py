"""Circuit breaker, balancing, backoff and retries across nodes, on a fake clock."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from ..config.schema import Privacy
from ..protocol.request import OpenedRequest, SealedRequest
from ..protocol.response import ResponseReader
from ..upstream.breaker import CircuitBreaker
from ..upstream.pool import Node, NodePool, backoff
from ..web.chat import ChatStream, StreamSettings
from ..web.metrics import RouterMetrics
from .fakes import FakeResponse, FakeUpstream
from .helpers import ENC, FINISH, SECRET, delta, stream_settings


class Breaker(TestCase):
    def test_lifecycle(self) -> None:
        seen: list[str] = []
        b = CircuitBreaker(3, 10, seen.append)
        for _ in range(2):
            self.assertTrue(b.allow(0))
            b.failure(0)
        self.assertEqual(b.state, "closed")
        b.success()  # a success resets the count
        for _ in range(3):
            b.failure(1)
        self.assertEqual(b.state, "open")
        self.assertFalse(b.allow(5))
        self.assertFalse(b.available(10.9))
        self.assertTrue(b.allow(11))  # cooled down: the probe
        self.assertEqual(b.state, "half_open")
        self.assertFalse(b.allow(11), "one probe at a time")
        b.failure(12)
        self.assertEqual(b.state, "open")
        self.assertTrue(b.allow(22))
        b.success()
        self.assertEqual(seen, ["open", "half_open", "open", "half_open", "closed"])
        self.assertTrue(b.allow(22))

    def test_available_follows_the_state_without_moving_it(self) -> None:
        b = CircuitBreaker(1, 10)
        self.assertTrue(b.available(0))
        b.failure(0)
        self.assertFalse(b.available(9.9))
        self.assertTrue(b.available(10), "cooled: a probe may go")
        self.assertEqual(b.state, "open", "asking does not move the machine")
        self.assertTrue(b.allow(10))
        self.assertFalse(b.available(10), "the probe is out")
        b.abandon()
        self.assertTrue(b.available(10), "its client left: another probe may go")

    def test_the_state_is_read_only_and_moves_only_along_the_table(self) -> None:
        b = CircuitBreaker(1, 10)
        with self.assertRaises(AttributeError):
            b.state = "open"  # type: ignore[misc]
        with self.assertRaises(KeyError):
            b._move("recovered")  # closed has no way out on a recovery

    def test_bad_settings(self) -> None:
        self.assertRaises(ValueError, CircuitBreaker, 0, 1)
        self.assertRaises(ValueError, CircuitBreaker, 1, 0)


def nodes(n: int) -> list[Node]:
    return [Node(f"n{i}", FakeUpstream(), CircuitBreaker(2, 5), healthy=True) for i in range(n)]


def upstream_of(node: Node) -> FakeUpstream:
    """The node's client, as the synthetic upstream these tests gave it."""
    assert isinstance(node.client, FakeUpstream)
    return node.client


class Balancing(TestCase):
    def test_round_robin_over_healthy(self) -> None:
        a, b, c = nodes(3)
        pool = NodePool([a, b, c])
        b.healthy = False
        picks = [pool.choose(0).name for _ in range(4)]  # type: ignore[union-attr]
        self.assertEqual(sorted(set(picks)), ["n0", "n2"])
        self.assertEqual(picks.count("n0"), 2)

    def test_least_streams(self) -> None:
        a, b = nodes(2)
        a.outstanding = 3
        pool = NodePool([a, b], "least_streams")
        self.assertIs(pool.choose(0), b)
        b.outstanding = 5
        self.assertIs(pool.choose(0), a)

    def test_open_breaker_and_exclusions(self) -> None:
        a, b = nodes(2)
        pool = NodePool([a, b])
        a.breaker.failure(0)
        a.breaker.failure(0)
        self.assertEqual([pool.choose(1) for _ in range(3)], [b, b, b])
        self.assertIsNone(pool.choose(1, exclude=[b]))
        self.assertTrue(pool.ready(1))
        b.healthy = False
        self.assertFalse(pool.ready(1))
        self.assertTrue(pool.ready(5), "a cooled-down breaker may take a probe")

    def test_backoff_capped_full_jitter(self) -> None:
        top = lambda low, high: high  # noqa: E731
        self.assertEqual([backoff(i, 0.1, 1.0, top) for i in range(6)], [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        self.assertEqual(backoff(3, 0.1, 1.0, lambda low, high: low), 0.0)


class Retries(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.nodes = nodes(2)
        self.pool = NodePool(self.nodes)
        self.request = DummyRequest([b"api", b"chat"])
        self.settings = stream_settings(
            keepalive=15, idle_timeout=30, privacy=Privacy(0, 0), first_token_timeout=20, request_timeout=100
        )

    def start(self, settings: StreamSettings | None = None) -> Any:
        stream = ChatStream(
            self.request,  # type: ignore[arg-type]
            self.clock,
            self.pool,
            RouterMetrics(),
            settings or self.settings,
            jitter=lambda a, b: b,
        )
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        return stream.start(OpenedRequest(body, SECRET), ENC)

    def chunks(self) -> list[dict[str, Any]]:
        return ResponseReader(SealedRequest({}, ENC, SECRET)).feed(b"".join(self.request.written))

    def upstream(self, i: int) -> FakeUpstream:
        return upstream_of(self.nodes[i])

    def test_failure_before_first_delta_goes_to_another_node(self) -> None:
        done = self.start()
        first = self.upstream(0) if self.upstream(0).requests else self.upstream(1)
        other = self.upstream(1) if first is self.upstream(0) else self.upstream(0)
        first.pending.errback(ConnectionRefusedError())
        self.assertEqual(other.requests, [])
        self.clock.advance(0.1)  # backoff (jitter at its top): 0.1 s
        self.assertEqual(len(other.requests), 1)
        self.assertEqual(other.requests[0][1]["messages"][-1], {"role": "user", "content": "hi"})
        response = FakeResponse()
        other.pending.callback(response)
        response.send(delta("hello") + FINISH)
        self.assertTrue(done.called)
        self.assertEqual([c["type"] for c in self.chunks()], ["delta", "done"])

    def test_failure_after_first_delta_ends_sealed(self) -> None:
        done = self.start()
        first = self.upstream(0) if self.upstream(0).requests else self.upstream(1)
        response = FakeResponse()
        first.pending.callback(response)
        response.send(delta("partial"))
        response.transport.stopProducing()  # the node dies mid-answer
        self.assertTrue(done.called)
        self.assertEqual(self.chunks()[-1]["code"], "upstream_failed")
        self.assertEqual(sum(len(upstream_of(u).requests) for u in self.nodes), 1, "no retry after a delta")

    def test_all_nodes_fail(self) -> None:
        done = self.start()
        for _ in range(4):
            for n in self.nodes:
                if upstream_of(n).requests and not upstream_of(n).pending.called:
                    upstream_of(n).pending.errback(ConnectionRefusedError())
            self.clock.advance(1)
        self.assertTrue(done.called)
        self.assertEqual(self.chunks()[-1]["code"], "upstream_failed")
        self.assertEqual(sum(len(upstream_of(n).requests) for n in self.nodes), 3, "the first try and two retries")

    def test_first_token_timeout_cancels_upstream(self) -> None:
        done = self.start()
        upstream = self.upstream(0) if self.upstream(0).requests else self.upstream(1)
        self.clock.pump([1] * 20)
        self.assertTrue(done.called)
        self.assertEqual(self.chunks()[-1]["code"], "timeout")
        self.assertTrue(upstream.cancelled)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_request_budget(self) -> None:
        done = self.start(
            stream_settings(
                keepalive=15, idle_timeout=30, privacy=Privacy(0, 0), first_token_timeout=20, request_timeout=50
            )
        )
        upstream = self.upstream(0) if self.upstream(0).requests else self.upstream(1)
        response = FakeResponse()
        upstream.pending.callback(response)
        for _ in range(49):
            response.send(delta("x"))
            self.clock.advance(1)
        self.assertFalse(done.called)
        self.clock.advance(1)
        self.assertTrue(done.called)
        self.assertEqual(self.chunks()[-1]["code"], "timeout")
        self.assertTrue(response.transport.stopped)

    def test_single_node_retried_after_a_dropped_connection(self) -> None:
        from twisted.web._newclient import ResponseNeverReceived

        self.pool = NodePool([self.nodes[0]])
        done = self.start()
        upstream = self.upstream(0)
        upstream.pending.errback(ResponseNeverReceived([]))  # a stale kept-alive connection
        self.clock.advance(0.1)
        self.assertEqual(len(upstream.requests), 2, "retried on the same node")
        response = FakeResponse()
        upstream.pending.callback(response)
        response.send(delta("ok") + FINISH)
        self.assertTrue(done.called)
        self.assertEqual(self.chunks()[-1]["type"], "done")

    def test_connect_timeout_ends_sealed_as_timeout(self) -> None:
        from twisted.internet.error import TimeoutError as ConnectTimeout

        done = self.start(stream_settings(keepalive=15, idle_timeout=30, privacy=Privacy(0, 0), retries=0))
        upstream = self.upstream(0) if self.upstream(0).requests else self.upstream(1)
        upstream.pending.errback(ConnectTimeout())
        self.assertTrue(done.called)
        self.assertEqual(self.chunks()[-1]["code"], "timeout")

    def test_breaker_opens_after_repeated_failures(self) -> None:
        node = self.nodes[0]
        self.pool = NodePool([node])
        for _ in range(2):
            self.request = DummyRequest([b"api", b"chat"])
            self.start(stream_settings(keepalive=15, idle_timeout=30, privacy=Privacy(0, 0), retries=0))
            upstream_of(node).pending.errback(ConnectionRefusedError())
        self.assertEqual(node.breaker.state, "open")
        self.assertFalse(self.pool.ready(self.clock.seconds()))


class Queueing(TestCase):
    """Past the per-node cap a request waits briefly in a bounded queue; running streams are untouched."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.node = nodes(1)[0]
        self.pool = NodePool([self.node], max_per_node=1, queue_size=1)
        self.settings = stream_settings(keepalive=15, idle_timeout=30, privacy=Privacy(0, 0), queue_timeout=5)

    def start(self) -> tuple[Any, DummyRequest]:
        request = DummyRequest([b"api", b"chat"])
        stream = ChatStream(request, self.clock, self.pool, RouterMetrics(), self.settings)  # type: ignore[arg-type]
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        return stream.start(OpenedRequest(body, SECRET), ENC), request

    def last(self, request: DummyRequest) -> dict[str, Any]:
        return ResponseReader(SealedRequest({}, ENC, SECRET)).feed(b"".join(request.written))[-1]

    def test_wait_then_proceed_or_overload(self) -> None:
        upstream = upstream_of(self.node)
        first, _ = self.start()
        response = FakeResponse()
        upstream.pending.callback(response)
        second, second_request = self.start()
        self.assertEqual(len(upstream.requests), 1, "the second waits for the slot")
        third, third_request = self.start()
        self.assertTrue(third.called)
        self.assertEqual(self.last(third_request)["code"], "overloaded")  # the queue holds one
        response.send(delta("a") + FINISH)
        self.assertTrue(first.called)
        self.assertEqual(len(upstream.requests), 2, "the slot went to the waiting request")
        upstream.pending.callback(FakeResponse())
        self.clock.pump([1] * 61)
        self.assertTrue(second.called)
        self.assertEqual(self.last(second_request)["code"], "timeout")  # first-token timeout, not a queue one

    def test_queue_timeout(self) -> None:
        self.start()
        waiting, request = self.start()
        self.clock.advance(5)
        self.assertTrue(waiting.called)
        self.assertEqual(self.last(request)["code"], "overloaded")
