"""Hostile plaintext and hostile upstream answers against one chat, on a fake clock.

Each case checks the invariant of the chat's life: exactly one sealed final event, and the
stream slot, node lease, timers and metrics all given back."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from ..config.schema import Privacy
from ..protocol.admission import SealedRefusal
from ..protocol.errors import RATE_LIMITED, RequestRejected
from ..protocol.request import OpenedRequest, SealedRequest
from ..protocol.response import ResponseReader
from ..upstream.breaker import CircuitBreaker
from ..upstream.pool import Node, NodePool
from ..web.chat import ChatStream
from ..web.metrics import RouterMetrics
from . import properties
from .fakes import ExactDialect, FakeResponse, FakeUpstream
from .helpers import ENC, FINISH, SECRET, delta, stream_settings

properties.load()

HI = {"messages": [{"role": "user", "content": "hi"}]}
CONTEXT_ERROR = b'{"error":{"code":400,"message":"too long","type":"exceed_context_size_error","n_prompt_tokens":9000,"n_ctx":2048}}'


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class Harness:
    """One ChatStream over two synthetic upstreams (test equipment), with the counters it must give back."""

    def __init__(self, retries: int = 2, context: int | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.upstreams = [FakeUpstream(context), FakeUpstream(context)]
        self.nodes = [Node(f"n{i}", u, CircuitBreaker(3, 10), healthy=True) for i, u in enumerate(self.upstreams)]
        self.pool = NodePool(self.nodes)
        self.metrics = RouterMetrics()
        self.request = DummyRequest([b"api", b"chat"])
        settings = stream_settings(
            keepalive=15, idle_timeout=60, privacy=Privacy(pad_to=0, coalesce_ms=0), retries=retries
        )
        self.stream = ChatStream(
            self.request,  # type: ignore[arg-type]
            self.clock,
            self.pool,
            self.metrics,
            settings,
        )
        self.done: Deferred[None] | None = None

    def start(self, plaintext: bytes | dict[str, Any] = HI) -> Deferred[None]:
        body = plaintext if isinstance(plaintext, bytes) else json.dumps(plaintext).encode()
        self.done = self.stream.start(OpenedRequest(body, SECRET), ENC)
        self.done.addErrback(lambda f: f.trap("twisted.internet.defer.CancelledError"))
        return self.done

    def respond(self, index: int = -1, code: int = 200) -> FakeResponse:
        """Answer the latest request (to whichever node it went)."""
        upstream = self.waiting() if index < 0 else self.upstreams[index]
        response = FakeResponse(code)
        upstream.pending.callback(response)
        return response

    def waiting(self) -> FakeUpstream:
        """The upstream whose request is still unanswered (the first, if none is)."""
        return next((u for u in self.upstreams if u.requests and not u.pending.called), self.upstreams[0])

    def chunks(self) -> list[dict[str, Any]]:
        return ResponseReader(SealedRequest({}, ENC, SECRET)).feed(b"".join(self.request.written))

    def finals(self) -> list[dict[str, Any]]:
        return [c for c in self.chunks() if c["type"] in ("done", "error")]

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    def settle(self) -> None:
        """Let every timer the chat may have left run out (lingering, retries, timeouts)."""
        for _ in range(700):
            if not self.clock.getDelayedCalls():
                break
            self.clock.advance(1)

    def assert_given_back(self, test: TestCase) -> None:
        self.settle()
        test.assertEqual([n.outstanding for n in self.nodes], [0, 0], "node leases")
        test.assertEqual(self.sample("privllm_active_streams"), 0, "active streams")
        test.assertEqual(self.sample("privllm_queued_streams"), 0, "queued streams")
        test.assertEqual(self.clock.getDelayedCalls(), [], "timers")
        test.assertEqual(len(self.finals()), 1 if self.stream._life.outcome != "client_gone" else 0)


class HostilePlaintext(TestCase):
    def test_lone_surrogate_is_a_sealed_bad_request(self) -> None:
        h = Harness()
        h.start(b'{"messages":[{"role":"user","content":"a\\ud800b"}]}')
        self.assertEqual(h.finals()[0]["code"], "bad_request")
        self.assertEqual(h.upstreams[0].requests + h.upstreams[1].requests, [])
        h.assert_given_back(self)

    def test_nesting_and_numbers_are_bounded(self) -> None:
        for body in (
            b'{"messages":[{"role":"user","content":"x"}],"max_tokens":1' + b"0" * 400 + b"}",
            b'{"messages":[{"role":"user","content":[[[[["x"]]]]]}]}',
            b"[" * 2000 + b"]" * 2000,
            b'{"messages":[{"role":"user","content":"x"}],"temperature":NaN}',
            b"\xff\xfe",
        ):
            h = Harness()
            h.start(body)
            self.assertEqual(h.finals()[0]["code"], "bad_request", body[:40])
            h.assert_given_back(self)


class HostileUpstream(TestCase):
    def test_context_overflow_is_the_requests_fault(self) -> None:
        h = Harness(retries=2)
        h.start()
        response = h.respond(code=400)
        response.send(CONTEXT_ERROR)
        response.end()
        self.assertEqual(h.finals()[0]["code"], "too_long")
        self.assertEqual(sum(len(u.requests) for u in h.upstreams), 1, "no retry")
        self.assertEqual([n.breaker._failures for n in h.nodes], [0, 0])
        self.assertEqual(h.sample("privllm_node_failures_total", {"node": "n0"}), 0)
        h.assert_given_back(self)

    def test_many_overlong_conversations_leave_the_breaker_closed(self) -> None:
        h = Harness()
        for _ in range(10):
            h.request = DummyRequest([b"api", b"chat"])
            settings = stream_settings(privacy=Privacy(0, 0))
            h.stream = ChatStream(h.request, h.clock, h.pool, h.metrics, settings)  # type: ignore[arg-type]
            h.start()
            response = h.respond(code=400)
            response.send(CONTEXT_ERROR)
            response.end()
        self.assertEqual([n.breaker.state for n in h.nodes], ["closed", "closed"])
        self.assertTrue(h.pool.ready(h.clock.seconds()))

    def test_invalid_request_is_a_bad_request(self) -> None:
        h = Harness()
        h.start()
        response = h.respond(code=400)
        response.send(b'{"error":{"code":400,"message":"x","type":"invalid_request_error"}}')
        response.end()
        self.assertEqual(h.finals()[0]["code"], "bad_request")
        h.assert_given_back(self)

    def test_error_event_mid_stream(self) -> None:
        h = Harness()
        h.start()
        response = h.respond()
        response.send(delta("a") + event({"error": {"type": "exceed_context_size_error", "message": "x"}}))
        self.assertEqual(h.finals()[0]["code"], "too_long")
        self.assertEqual(h.nodes[0].breaker._failures + h.nodes[1].breaker._failures, 0)
        h.assert_given_back(self)

    def test_server_error_event_is_the_nodes_fault(self) -> None:
        h = Harness(retries=1)
        h.start()
        h.respond().send(event({"error": {"type": "server_error", "message": "x"}}))
        h.clock.advance(1)
        self.assertEqual(sum(len(u.requests) for u in h.upstreams), 2, "retried on another node")
        h.respond().send(delta("ok") + FINISH)
        self.assertEqual(h.finals()[0]["type"], "done")
        h.assert_given_back(self)

    def test_wrongly_typed_json(self) -> None:
        for body in (
            event({"choices": 1}),
            event({"choices": [{"delta": {"content": 5}}]}),
            event({"choices": [1]}),
            event([1, 2]),
            b'data: {"choices":[{"delta":{"content":"\\ud800"}}]}\n\n',
            b"data: " + b"[" * 5000 + b"\n\n",
            b"data: {nope\n\n",
        ):
            h = Harness(retries=0)
            h.start()
            h.respond().send(body)
            self.assertEqual(h.finals()[0]["code"], "upstream_failed", body[:40])
            h.assert_given_back(self)

    def test_absurd_usage_is_not_believed(self) -> None:
        h = Harness()
        h.start()
        usage = b'"usage":{"prompt_tokens":1' + b"0" * 400 + b',"completion_tokens":-5}'
        finish = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],' + usage + b"}\n\ndata: [DONE]\n\n"
        h.respond().send(delta("a") + finish)
        self.assertEqual(h.finals()[0]["usage"], {"prompt_tokens": 0, "completion_tokens": 0})
        h.assert_given_back(self)

    def test_reset_after_the_first_delta(self) -> None:
        h = Harness()
        h.start()
        response = h.respond()
        response.send(delta("a"))
        response.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(h.finals()[0]["code"], "upstream_failed")
        h.assert_given_back(self)

    def test_stall_and_slow_drip(self) -> None:
        h = Harness()
        h.start()
        response = h.respond()
        response.send(delta("a"))
        for _ in range(100):  # a byte now and then keeps the idle timer quiet, not the request budget
            h.clock.advance(10)
            response.send(b": drip\n")
        h.settle()
        self.assertEqual(h.finals()[0]["code"], "timeout")
        self.assertTrue(response.transport.stopped)
        h.assert_given_back(self)

    def test_refused_connection_marks_the_node_down(self) -> None:
        h = Harness(retries=1)
        h.start()
        h.upstreams[0].pending.errback(ConnectionRefusedError())
        self.assertFalse(h.nodes[0].healthy)
        h.clock.advance(1)
        h.respond(1).send(delta("b") + FINISH)
        self.assertEqual(h.finals()[0]["type"], "done")
        h.assert_given_back(self)

    def test_a_node_answering_503_is_marked_down(self) -> None:
        """llama-server loading its model, or a node whose llama-server is gone."""
        h = Harness(retries=1)
        h.start()
        response = h.respond(0, code=503)
        response.send(b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}')
        response.end()
        self.assertFalse(h.nodes[0].healthy)
        h.clock.advance(1)
        h.respond(1).send(delta("b") + FINISH)
        self.assertEqual(h.finals()[0]["type"], "done")
        h.assert_given_back(self)

    def test_a_bug_ends_sealed_internal(self) -> None:
        h = Harness()
        h.start()
        response = h.respond()
        self.patch(h.stream._translator, "feed", lambda data: 1 / 0)
        response.send(delta("a"))
        self.assertEqual(h.finals()[0]["code"], "internal")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        h.assert_given_back(self)

    def test_a_failed_write_of_one_read_ends_the_chat(self) -> None:
        """The chunks of one upstream read leave in one write; if it fails, the chat ends
        (its final chunk written at once) and gives everything back."""
        h = Harness()
        h.start()
        response = h.respond()
        write = h.request.write
        failed: list[bytes] = []

        def write_once(data: bytes) -> None:
            if not failed:
                failed.append(data)
                raise OSError("write failed")
            write(data)

        h.request.write = write_once  # type: ignore[method-assign]
        response.send(delta("a") + delta("b"))
        self.assertEqual(failed[0].count(b"event: chunk"), 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        h.request.written.insert(-1, failed[0])  # as if it had gone out: the stream opens in order
        self.assertEqual([c.get("text") for c in h.chunks()[:2]], ["a", "b"])
        self.assertEqual(h.finals()[0]["code"], "internal")
        h.assert_given_back(self)

    def test_client_gone_during_a_probe_frees_the_probe(self) -> None:
        h = Harness()
        node = h.nodes[0]
        h.nodes[1].healthy = False
        for _ in range(3):
            node.breaker.failure(h.clock.seconds())
        h.clock.advance(10)
        h.start()
        self.assertEqual(node.breaker.state, "half_open")
        assert h.done is not None
        h.done.cancel()
        self.assertTrue(node.breaker.available(h.clock.seconds()), "another probe may go")
        h.assert_given_back(self)


class Context(TestCase):
    def test_short_conversation_is_sent_without_counting(self) -> None:
        h = Harness(context=2048)
        h.start()
        self.assertEqual(h.upstreams[0].counts, [])
        self.assertEqual(len(h.upstreams[0].requests), 1)

    def test_long_conversation_is_counted_then_sent(self) -> None:
        h = Harness(context=2048)
        h.start({"messages": [{"role": "user", "content": "word " * 1000}]})
        self.assertEqual(len(h.upstreams[0].counts), 1)
        self.assertEqual(h.upstreams[0].requests, [])
        h.upstreams[0].counting.callback(1000)
        self.assertEqual(len(h.upstreams[0].requests), 1)

    def test_over_long_conversation_is_refused_before_sending(self) -> None:
        h = Harness(context=2048)
        h.start({"messages": [{"role": "user", "content": "word " * 1000}]})
        h.upstreams[0].counting.callback(2100)
        self.assertEqual(h.finals()[0]["code"], "too_long")
        self.assertEqual(h.upstreams[0].requests, [])
        self.assertEqual(h.nodes[0].breaker._failures, 0)
        h.assert_given_back(self)

    def test_a_failed_count_is_the_nodes_fault(self) -> None:
        h = Harness(context=2048, retries=0)
        h.start({"messages": [{"role": "user", "content": "word " * 1000}]})
        h.upstreams[0].counting.errback(ConnectionLost())
        self.assertEqual(h.finals()[0]["code"], "upstream_failed")
        h.assert_given_back(self)


# Faults a synthetic upstream can commit, one step at a time.
STEPS = st.sampled_from(
    [
        "ok",
        "code400",
        "code500",
        "refuse",
        "lose",
        "delta",
        "garbage",
        "error_event",
        "finish",
        "end",
        "tick",
        "stall",
        "client_gone",
        "count",
    ]
)


UPSTREAM_BYTES = {
    "delta": delta("x"),
    "garbage": b"data: {\n\n",
    "error_event": event({"error": {"type": "exceed_context_size_error"}}),
    "finish": FINISH,
}


class Properties(TestCase):
    @given(st.lists(STEPS, max_size=25), st.integers(0, 2), st.sampled_from([None, 64, 4096]))
    def test_every_chat_ends_once_and_gives_back(self, steps: list[str], retries: int, context: int | None) -> None:
        h = Harness(retries=retries, context=context)
        h.start({"messages": [{"role": "user", "content": "hello " * 30}]})
        response: FakeResponse | None = None
        for step in steps:
            counting = next((u for u in h.upstreams if u.counts and not u.counting.called), None)
            asked = next((u for u in h.upstreams if u.requests and not u.pending.called), None)
            streaming = response is not None and response.protocol is not None and not response.transport.stopped
            if step == "count" and counting is not None:
                counting.counting.callback(50)
            elif step in ("ok", "code400", "code500") and asked is not None:
                response = h.respond(code={"ok": 200, "code400": 400, "code500": 500}[step])
            elif step == "refuse" and asked is not None:
                asked.pending.errback(ConnectionRefusedError())
            elif step == "client_gone" and h.done is not None and not h.done.called:
                h.done.cancel()
            elif step in ("tick", "stall"):
                h.clock.advance(1 if step == "tick" else 61)
            elif step in UPSTREAM_BYTES and streaming:
                assert response is not None
                response.send(UPSTREAM_BYTES[step])
            elif step == "lose" and streaming:
                assert response is not None
                response.protocol.connectionLost(Failure(ConnectionLost()))
            elif step == "end" and streaming:
                assert response is not None
                response.end()
        h.settle()
        self.assertTrue(h.stream._life.ended)
        h.assert_given_back(self)
        self.assertEqual(self.flushLoggedErrors(), [], "no programming error on any path")


LONG = {"messages": [{"role": "user", "content": "x" * 5000}]}


class Regressions(TestCase):
    """Paths a review of the state machine's adapter found, each failing before its fix."""

    def test_an_old_body_cannot_feed_the_retry(self) -> None:
        h = Harness(retries=1)
        h.start()
        old = h.respond(0)
        old.send(b"data: [DONE]\n\n")  # no finish reason: a node failure, retried
        self.assertTrue(old.transport.stopped, "a failed attempt's body is not kept to be reused")
        h.clock.advance(1)
        new = h.respond(1)
        old.protocol.dataReceived(delta("INJECTED") + event({"error": {"type": "server_error"}}))
        new.send(delta("b") + FINISH)
        self.assertEqual([c.get("text") for c in h.chunks()][:1], ["b"])
        self.assertEqual(h.finals()[0]["type"], "done")
        self.assertEqual(h.nodes[1].breaker._failures, 0)
        h.assert_given_back(self)

    def test_too_long_before_sending_frees_a_half_open_probe(self) -> None:
        h = Harness(context=2048)
        node = h.nodes[0]
        node.dialect = ExactDialect()
        h.nodes[1].healthy = False
        for _ in range(3):
            node.breaker.failure(h.clock.seconds())
        h.clock.advance(10)
        h.start(LONG)
        self.assertEqual(h.finals()[0]["code"], "too_long")
        h.assert_given_back(self)
        self.assertTrue(h.pool.ready(h.clock.seconds()), "the node is not stuck half-open")

    def test_a_woken_chat_that_takes_no_slot_wakes_the_next(self) -> None:
        h = Harness(context=2048)
        for node in h.nodes:
            node.dialect = ExactDialect()
        h.nodes[1].healthy = False
        h.pool.max_per_node, h.pool.queue_size = 1, 4
        h.start()
        first = h.respond(0)
        waiting = []
        for body in (LONG, HI):
            request = DummyRequest([b"api", b"chat"])
            settings = stream_settings(privacy=Privacy(0, 0))
            stream = ChatStream(request, h.clock, h.pool, h.metrics, settings)  # type: ignore[arg-type]
            stream.start(OpenedRequest(json.dumps(body).encode(), SECRET), ENC)
            waiting.append(stream)
        first.send(delta("a") + FINISH)
        self.assertEqual([s._life.state.value for s in waiting], ["failed", "attempting"])

    def test_a_stalled_refusal_body_is_closed(self) -> None:
        h = Harness(retries=0)
        h.start()
        response = h.respond(code=400)
        response.send(b'{"error":')  # and nothing more
        h.clock.advance(61)
        self.assertEqual(h.finals()[0]["code"], "timeout")
        self.assertTrue(response.transport.stopped)
        h.assert_given_back(self)

    def test_a_bug_while_ending_still_ends_once(self) -> None:
        h = Harness()
        done = h.start()
        response = h.respond(0)

        def bug() -> None:
            raise RuntimeError("a bug")

        h.nodes[0].breaker.success = bug  # type: ignore[method-assign]
        response.send(delta("a") + FINISH)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(h.finals()[0]["type"], "done")
        self.assertTrue(done.called)
        h.assert_given_back(self)


class Metrics(TestCase):
    """What one chat tells the operator's metrics, timed on the fake clock."""

    def test_the_timings_of_one_answer(self) -> None:
        h = Harness()
        h.start()
        h.clock.advance(0.2)
        response = h.respond(0)
        h.clock.advance(0.3)
        response.send(delta("a"))
        h.clock.advance(0.05)
        response.send(delta("b"))
        h.clock.advance(0.05)
        response.send(delta("c") + FINISH)  # 2 completion tokens
        h.assert_given_back(self)

        def observed(name: str, labels: dict[str, str] | None = None) -> tuple[float, float]:
            return h.sample(name + "_count", labels), round(h.sample(name + "_sum", labels), 6)

        self.assertEqual(observed("privllm_upstream_first_byte_seconds", {"node": "n0"}), (1, 0.2))
        self.assertEqual(observed("privllm_time_to_first_token_seconds"), (1, 0.5))
        self.assertEqual(observed("privllm_inter_chunk_seconds"), (2, 0.1))
        self.assertEqual(observed("privllm_tokens_per_second"), (1, 10.0))  # the 2nd token 0.1 s after the 1st
        self.assertEqual(observed("privllm_answer_seconds"), (1, 0.6))

    def test_tokens_per_second_count_from_the_first_bytes_not_the_first_delta(self) -> None:
        """Tokens before the first delta (a role event here; Harmony's reasoning) take time
        too; and a delta arriving with the finish still gives the answer its rate."""
        h = Harness()
        h.start()
        response = h.respond(0)
        response.send(event({"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]}))
        h.clock.advance(0.5)
        response.send(delta("a") + delta("b") + FINISH)  # 2 completion tokens
        h.assert_given_back(self)
        self.assertEqual(h.sample("privllm_tokens_per_second_count"), 1)
        self.assertEqual(h.sample("privllm_tokens_per_second_sum"), 2.0)

    def test_a_failed_answer_is_not_an_answer_time(self) -> None:
        h = Harness(retries=0)
        h.start()
        h.respond(0, code=500).end()
        h.assert_given_back(self)
        self.assertEqual(h.sample("privllm_chat_requests_total", {"outcome": "upstream_failed"}), 1)
        self.assertEqual(h.sample("privllm_answer_seconds_count"), 0)
        self.assertEqual(h.sample("privllm_tokens_per_second_count"), 0)

    def one_busy_node_and_a_second_chat(self) -> Harness:
        """One node with one slot, taken by the harness's chat; a second chat queues (10 s)."""
        h = Harness()
        h.nodes[1].healthy = False
        h.pool.max_per_node, h.pool.queue_size = 1, 4
        h.start()
        settings = stream_settings(privacy=Privacy(0, 0), queue_timeout=10)
        second = ChatStream(DummyRequest([b"api", b"chat"]), h.clock, h.pool, h.metrics, settings)  # type: ignore[arg-type]
        second.start(OpenedRequest(json.dumps(HI).encode(), SECRET), ENC)
        return h

    def test_queued_streams_and_a_queue_timeout(self) -> None:
        h = self.one_busy_node_and_a_second_chat()
        self.assertEqual(h.sample("privllm_queued_streams"), 1)
        self.assertEqual(h.sample("privllm_active_streams"), 2)
        h.clock.advance(10)
        self.assertEqual(h.sample("privllm_queued_streams"), 0)
        self.assertEqual(h.sample("privllm_refusals_total", {"reason": "no_node"}), 1)
        self.assertEqual(h.sample("privllm_chat_requests_total", {"outcome": "overloaded"}), 1)
        h.respond(0).send(delta("a") + FINISH)
        h.assert_given_back(self)

    def test_a_queued_stream_that_gets_its_slot_leaves_the_gauge(self) -> None:
        h = self.one_busy_node_and_a_second_chat()
        h.respond(0).send(delta("a") + FINISH)
        self.assertEqual(h.sample("privllm_queued_streams"), 0)
        self.assertEqual(h.sample("privllm_refusals_total", {"reason": "no_node"}), 0)

    def test_no_node_is_a_refusal(self) -> None:
        h = Harness()
        for node in h.nodes:
            node.healthy = False
        h.start()
        h.assert_given_back(self)
        self.assertEqual(h.sample("privllm_refusals_total", {"reason": "no_node"}), 1)

    def test_a_sealed_refusal_counts_its_reason(self) -> None:
        h = Harness()
        refusal = SealedRefusal("rate_limited", "too many requests from this device", 1, reason="device_rate")
        h.stream.start(OpenedRequest(json.dumps(HI).encode(), SECRET), ENC, refusal)
        h.assert_given_back(self)
        self.assertEqual(h.sample("privllm_refusals_total", {"reason": "device_rate"}), 1)
        self.assertEqual(h.upstreams[0].requests, [])

    def test_a_reason_outside_the_allow_list_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            SealedRefusal("rate_limited", "x", reason="192.0.2.1")
        with self.assertRaises(ValueError):
            RequestRejected(RATE_LIMITED, reason="device 1234")
