"""ChatStream on a fake clock, with a synthetic upstream (test equipment) instead of llama-server."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from ..config.schema import Privacy
from ..protocol.request import OpenedRequest, SealedRequest
from ..protocol.response import ResponseReader
from ..protocol.sse import SSEParser
from ..protocol.stream import StreamError
from ..web.chat import ChatStream
from ..web.metrics import RouterMetrics
from .fakes import FakeResponse, FakeUpstream
from .helpers import ENC, FINISH, SECRET, delta, pool_of, stream_settings


class Streaming(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.upstream = FakeUpstream()
        self.metrics = RouterMetrics()
        self.request = DummyRequest([b"api", b"chat"])
        settings = stream_settings(keepalive=15, idle_timeout=60, privacy=Privacy(pad_to=0, coalesce_ms=0), retries=0)
        self.stream = ChatStream(self.request, self.clock, pool_of(self.upstream), self.metrics, settings)  # type: ignore[arg-type]

    def start(self, plaintext: dict[str, Any] | None = None) -> Deferred[None]:
        body = json.dumps(plaintext or {"messages": [{"role": "user", "content": "hi"}]}).encode()
        return self.stream.start(OpenedRequest(body, SECRET), ENC)

    def opened(self) -> list[dict[str, Any]]:
        reader = ResponseReader(SealedRequest({}, ENC, SECRET))
        return reader.feed(b"".join(self.request.written))

    def outcome(self, name: str) -> float:
        return self.metrics.registry.get_sample_value("privllm_chat_requests_total", {"outcome": name}) or 0.0

    def test_deltas_then_done(self) -> None:
        done = self.start()
        self.assertEqual(self.request.responseCode, 200)
        self.assertEqual(self.request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(self.upstream.requests[0][0], "/v1/chat/completions")
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("Hel") + delta("lo")[:10])
        response.send(delta("lo")[10:] + FINISH)
        self.assertTrue(done.called)
        chunks = self.opened()
        self.assertEqual([c.get("text") for c in chunks[:2]], ["Hel", "lo"])
        self.assertEqual(
            chunks[2], {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 4, "completion_tokens": 2}}
        )
        self.assertEqual(self.outcome("ok"), 1)
        self.assertEqual(self.metrics.registry.get_sample_value("privllm_sealed_chunks_total"), 3)
        self.assertEqual(self.metrics.registry.get_sample_value("privllm_active_streams"), 0)

    def test_one_write_per_upstream_read(self) -> None:
        """The chunks of one upstream read leave in one write (one HTTP chunk, one TLS record);
        nothing is held past the read, and the end is written before the request finishes."""
        done = self.start()
        response = FakeResponse()
        self.upstream.pending.callback(response)
        before = len(self.request.written)
        response.send(delta("a") + delta("b") + delta("c"))
        self.assertEqual(len(self.request.written), before + 1)
        self.assertEqual(self.request.written[-1].count(b"event: chunk"), 3)
        response.send(b": a comment, no delta\n\n")
        self.assertEqual(len(self.request.written), before + 1)
        self.clock.pump([1] * 15)  # a keep-alive, written by itself: no hold left open
        self.assertEqual(self.request.written[-1], b": keepalive\n\n")
        at_done: list[int] = []
        done.addCallback(lambda _: at_done.append(len(self.request.written)))  # the route finishes the request here
        response.send(delta("d") + FINISH)
        self.assertEqual(at_done, [before + 3])
        self.assertEqual([c.get("text") for c in self.opened()], ["a", "b", "c", "d", None])

    def test_bad_parameters_sealed(self) -> None:
        done = self.start({"messages": [{"role": "user", "content": "x"}], "top_p": 0})
        self.assertTrue(done.called)
        self.assertEqual(self.opened()[-1]["code"], "bad_request")
        self.assertIn("top_p", self.opened()[-1]["message"])
        self.assertEqual(self.upstream.requests, [])

    def test_keepalive_then_idle_timeout(self) -> None:
        done = self.start()
        self.upstream.pending.callback(FakeResponse())
        written = len(self.request.written)
        self.clock.pump([1] * 14)
        self.assertEqual(len(self.request.written), written)
        self.clock.advance(1)
        self.assertEqual(self.request.written[-1], b": keepalive\n\n")
        self.clock.pump([1] * 45)
        self.assertTrue(done.called)
        self.assertEqual(self.opened()[-1]["code"], "timeout")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_upstream_refuses(self) -> None:
        done = self.start()
        response = FakeResponse(code=500)
        self.upstream.pending.callback(response)
        response.send(b'{"error":{"code":500,"message":"x","type":"server_error"}}')
        self.assertFalse(done.called, "the refusal's body is read to learn whose fault it is")
        response.end()
        self.assertTrue(done.called)
        self.assertEqual(self.opened()[-1]["code"], "upstream_failed")

    def test_upstream_refusal_body_is_bounded(self) -> None:
        done = self.start()
        response = FakeResponse(code=400)
        self.upstream.pending.callback(response)
        response.send(b"x" * (1 << 17))
        self.assertTrue(response.transport.stopped)
        self.assertTrue(done.called)
        self.assertEqual(self.opened()[-1]["code"], "upstream_failed")

    def test_upstream_cut_short(self) -> None:
        done = self.start()
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("partial"))
        response.end()
        self.assertTrue(done.called)
        chunks = self.opened()
        self.assertEqual((chunks[0]["text"], chunks[-1]["code"]), ("partial", "upstream_failed"))

    def test_connect_failure(self) -> None:
        done = self.start()
        self.upstream.pending.errback(ConnectionRefusedError())
        self.assertTrue(done.called)
        self.assertEqual(self.opened()[-1]["code"], "upstream_failed")

    def test_client_gone_cancels_upstream_request(self) -> None:
        done = self.start()
        done.addErrback(lambda f: None)
        done.cancel()
        self.assertTrue(self.upstream.cancelled)
        self.assertEqual(self.outcome("client_gone"), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_client_gone_mid_answer_stops_upstream_body(self) -> None:
        done = self.start()
        done.addErrback(lambda f: None)
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("a"))
        done.cancel()
        self.assertTrue(response.transport.stopped)
        self.assertEqual(self.metrics.registry.get_sample_value("privllm_active_streams"), 0)

    def test_chunk_count_reported_each_second(self) -> None:
        self.start()
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("a") + delta("b"))
        self.clock.advance(1.0)
        self.assertEqual(self.metrics.registry.get_sample_value("privllm_sealed_chunks_total"), 2)

    def test_complete_answer_keeps_upstream_connection(self) -> None:
        """After [DONE] the response's end is read, not cut, so the connection can be reused."""
        done = self.start()
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("a") + FINISH)
        self.assertTrue(done.called)
        self.assertFalse(response.transport.stopped)
        response.end()
        self.assertFalse(response.transport.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_complete_answer_whose_response_never_ends_is_cut(self) -> None:
        self.start()
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("a") + FINISH)
        self.clock.advance(4.9)
        self.assertFalse(response.transport.stopped)
        self.clock.advance(0.2)
        self.assertTrue(response.transport.stopped)

    def test_answer_cut_short_by_upstream_stops_at_once(self) -> None:
        """A finish without [DONE] (the upstream ended early): nothing to wait for."""
        done = self.start()
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("a") + FINISH.replace(b"data: [DONE]\n\n", b""))
        self.assertFalse(done.called)
        response.end()
        self.assertTrue(done.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_truncated_stream_detected_by_reader(self) -> None:
        self.start()
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("a"))
        reader = ResponseReader(SealedRequest({}, ENC, SECRET))
        reader.feed(b"".join(self.request.written))
        self.assertRaises(StreamError, reader.end)


class Coalescing(TestCase):
    """Padding and coalescing on the fake clock: the first delta at once, then one chunk per window."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeUpstream()
        self.request = DummyRequest([b"api", b"chat"])
        settings = stream_settings(keepalive=15, idle_timeout=60, privacy=Privacy(pad_to=256, coalesce_ms=50))
        self.stream = ChatStream(self.request, self.clock, pool_of(self.upstream), RouterMetrics(), settings)  # type: ignore[arg-type]
        self.done = self.stream.start(OpenedRequest(b'{"messages":[{"role":"user","content":"hi"}]}', SECRET), ENC)
        self.response = FakeResponse()
        self.upstream.pending.callback(self.response)

    def sealed_sizes(self) -> list[int]:
        import base64

        events = SSEParser().feed(b"".join(self.request.written))  # one write may carry several chunks
        return [len(base64.b64decode(e.data)) for e in events if e.event == "chunk"]

    def test_gathered_and_padded(self) -> None:
        self.response.send(delta("First"))
        self.assertEqual(len(self.sealed_sizes()), 1, "the first delta is not held back")
        for word in ["a", "bb", "ccc", "dddd"]:
            self.response.send(delta(word))
            self.clock.advance(0.01)
        self.assertEqual(len(self.sealed_sizes()), 1)
        self.clock.advance(0.01)  # 50 ms after the second delta
        self.assertEqual(len(self.sealed_sizes()), 2)
        self.response.send(delta("x" * 300) + delta("tail") + FINISH)
        chunks = ResponseReader(SealedRequest({}, ENC, SECRET)).feed(b"".join(self.request.written))
        self.assertEqual("".join(c.get("text", "") for c in chunks), "First" + "abbcccdddd" + "x" * 300 + "tail")
        sizes = self.sealed_sizes()
        self.assertTrue(all(size % 256 == 16 for size in sizes), sizes)
        self.assertEqual(set(sizes[:2] + sizes[3:-1]), {256 + 16})
        self.assertTrue(self.done.called)
        self.response.end()
        self.assertEqual(self.clock.getDelayedCalls(), [])
