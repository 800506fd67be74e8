"""The client's stream reading (v1 and v2) against a scripted body on a fake clock: a silent router is cut."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone

from ..client.api import STREAM_IDLE_TIMEOUT, ServerError, TruncatedError, read_stream, read_stream_v2
from ..protocol.encoding import b64encode, dumps
from ..protocol.request import SealedRequest
from ..protocol.response import ResponseReader
from ..protocol.sse import KEEPALIVE, encode_event
from ..protocol.stream import StreamSealer, derive_stream_keys
from ..protocol.v2.request import open_chat_request, seal_chat_request
from ..protocol.v2.response import ResponseStream
from .fakes import FakeResponse
from .test_ohttp import fresh_gateway


class IdleStream(TestCase):
    def test_silent_stream_is_cut_and_keepalives_keep_it(self) -> None:
        clock = Clock()
        body = FakeResponse()
        reader = ResponseReader(SealedRequest({}, os.urandom(32), os.urandom(32)))
        result: Any = ensureDeferred(read_stream(body, reader, clock))
        body.send(encode_event("init", dumps({"response_nonce": b64encode(os.urandom(32))}).decode()))
        clock.advance(STREAM_IDLE_TIMEOUT - 1)
        body.send(KEEPALIVE)
        clock.advance(STREAM_IDLE_TIMEOUT - 1)
        self.assertFalse(body.transport.stopped, "a keepalive restarts the wait")
        clock.advance(1)
        self.assertTrue(body.transport.stopped)
        self.failureResultOf(result, TruncatedError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_finished_stream_leaves_no_timer(self) -> None:
        clock = Clock()
        body = FakeResponse()
        enc, secret, nonce = os.urandom(32), os.urandom(32), os.urandom(32)
        reader = ResponseReader(SealedRequest({}, enc, secret))
        result: Any = ensureDeferred(read_stream(body, reader, clock))
        sealer = StreamSealer(derive_stream_keys(secret, enc, nonce))
        body.send(encode_event("init", dumps({"response_nonce": b64encode(nonce)}).decode()))
        body.send(encode_event("chunk", sealer.seal({"type": "delta", "text": "hi"})))
        done = {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        body.send(encode_event("chunk", sealer.seal(done, final=True)))
        assert body.protocol is not None
        body.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(result).text, "hi")
        self.assertEqual(clock.getDelayedCalls(), [])


class CallbackErrors(TestCase):
    def test_an_error_in_the_callback_is_not_a_complete_answer(self) -> None:
        """The app's callback failed on a delta while the final chunk had already arrived:
        the chat must fail with that error, not return a text missing the rest."""
        clock = Clock()
        body = FakeResponse()
        enc, secret, nonce = os.urandom(32), os.urandom(32), os.urandom(32)
        sealer = StreamSealer(derive_stream_keys(secret, enc, nonce))

        def on_chunk(chunk: dict[str, Any]) -> None:
            if chunk.get("text") == "world":
                raise RuntimeError("the app failed")

        reader = ResponseReader(SealedRequest({}, enc, secret))
        result: Any = ensureDeferred(read_stream(body, reader, clock, on_chunk))
        done = {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 3}}
        body.send(
            encode_event("init", dumps({"response_nonce": b64encode(nonce)}).decode())
            + b"".join(
                encode_event("chunk", sealer.seal({"type": "delta", "text": t})) for t in ("hello ", "world", "!")
            )
            + encode_event("chunk", sealer.seal(done, final=True))
        )
        self.failureResultOf(result, RuntimeError)
        self.assertEqual(clock.getDelayedCalls(), [])


class SealedErrors(TestCase):
    def error_after(self, chunk: dict[str, Any]) -> ServerError:
        clock = Clock()
        body = FakeResponse()
        enc, secret, nonce = os.urandom(32), os.urandom(32), os.urandom(32)
        result: Any = ensureDeferred(read_stream(body, ResponseReader(SealedRequest({}, enc, secret)), clock))
        sealer = StreamSealer(derive_stream_keys(secret, enc, nonce))
        body.send(encode_event("init", dumps({"response_nonce": b64encode(nonce)}).decode()))
        body.send(encode_event("chunk", sealer.seal(chunk, final=True)))
        assert body.protocol is not None
        body.protocol.connectionLost(Failure(ResponseDone()))
        return self.failureResultOf(result, ServerError).value  # type: ignore[no-any-return]

    def test_sealed_rate_limit_carries_its_wait(self) -> None:
        error = self.error_after({"type": "error", "code": "rate_limited", "message": "slow down", "retry_after": 7})
        self.assertEqual((error.code, error.retry_after), ("rate_limited", 7))

    def test_absurd_wait_is_not_repeated(self) -> None:
        for value in (-1, 10**9, "7", True, 1.5):
            error = self.error_after({"type": "error", "code": "rate_limited", "message": "x", "retry_after": value})
            self.assertIsNone(error.retry_after, value)


class IdleStreamV2(TestCase):
    """Protocol v2's answer through the same reader: sealed keep-alives restart the wait, the
    final event comes out at the end, and no timer is left behind."""

    def setUp(self) -> None:
        keys = fresh_gateway()
        self.sealed = seal_chat_request(next(iter(keys.values())).config, os.urandom(32), {}, 1767229230)
        self.stream = ResponseStream(open_chat_request(keys, self.sealed.body).context, 32)

    def test_silent_stream_is_cut_and_keepalives_keep_it(self) -> None:
        clock = Clock()
        body = FakeResponse()
        result: Any = ensureDeferred(read_stream_v2(body, self.sealed, clock))
        body.send(self.stream.start())
        clock.advance(STREAM_IDLE_TIMEOUT - 1)
        body.send(self.stream.keepalive())
        clock.advance(STREAM_IDLE_TIMEOUT - 1)
        self.assertFalse(body.transport.stopped, "a keepalive restarts the wait")
        clock.advance(1)
        self.assertTrue(body.transport.stopped)
        self.failureResultOf(result, TruncatedError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bytes_that_open_no_chunk_do_not_hold_the_wait(self) -> None:
        """A relay trickling a chunk that never completes, a byte at a time, must not keep the
        client waiting: only an opened chunk (a keep-alive is one) proves the stream alive."""
        clock = Clock()
        body = FakeResponse()
        result: Any = ensureDeferred(read_stream_v2(body, self.sealed, clock))
        body.send(self.stream.start())
        pending = self.stream.event({"type": "delta", "text": "hi"})
        for byte in pending[: len(pending) // 2]:
            clock.advance(STREAM_IDLE_TIMEOUT / 4)
            if body.transport.stopped:
                break
            body.send(bytes([byte]))
        self.assertTrue(body.transport.stopped)
        self.failureResultOf(result, TruncatedError)

    def test_finished_stream_leaves_no_timer(self) -> None:
        clock = Clock()
        body = FakeResponse()
        seen: list[dict[str, Any]] = []
        result: Any = ensureDeferred(read_stream_v2(body, self.sealed, clock, seen.append))
        body.send(self.stream.start() + self.stream.event({"type": "delta", "text": "hi"}))
        self.assertEqual(seen, [{"type": "delta", "text": "hi"}], "handed on before the end")
        done = {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        body.send(self.stream.final(done))
        self.assertEqual(len(seen), 1, "the final chunk opens only at the end of the body")
        assert body.protocol is not None
        body.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(result).text, "hi")
        self.assertEqual(seen[-1], done)
        self.assertEqual(clock.getDelayedCalls(), [])
