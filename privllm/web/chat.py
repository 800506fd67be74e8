"""
One admitted chat, streamed: picks inference nodes from the pool, feeds the upstream
translator, and tells privllm.web.sealed what the client gets (deltas, the end, an error).

Everything here happens after decryption succeeded, so every failure is sent sealed.
A failed node is retried on another, with capped exponential backoff and full jitter,
only while nothing but `init` has reached the client; after the first delta a failure
ends the stream with a sealed error. The upstream body (which holds the conversation) is
kept only until the first delta arrives, for those retries.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.base import DelayedCall
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from ..body import BodyStream
from ..config.schema import Privacy
from ..protocol.admission import SealedRefusal
from ..protocol.chat import BadChatRequest, ChatLimits, ChatRequest, parse_chat_request
from ..protocol.request import OpenedRequest
from ..protocol.slots import StreamSlots
from ..upstream.openai_stream import ChatCompletionStream, Delta, Finished, UpstreamProtocolError
from ..upstream.pool import Node, NodePool, backoff
from .metrics import RouterMetrics
from .sealed import SealedEvents

log = Logger()

UPSTREAM_LINGER = 5.0  # seconds to wait for the end of an upstream response already complete


@dataclass(frozen=True)
class StreamSettings:
    limits: ChatLimits
    keepalive: float = 15.0
    idle_timeout: float = 120.0
    privacy: Privacy = field(default_factory=Privacy)
    first_token_timeout: float = 60.0
    request_timeout: float = 600.0
    retries: int = 2
    retry_base: float = 0.1
    retry_cap: float = 2.0
    queue_timeout: float = 10.0


class ChatStream:
    def __init__(
        self,
        request: Request,
        clock: Any,
        pool: NodePool,
        metrics: RouterMetrics,
        settings: StreamSettings,
        tag: str = "-",
        jitter: Callable[[float, float], float] = random.uniform,
        slots: StreamSlots | None = None,
        device: bytes = b"",
    ) -> None:
        self._slots = slots
        self._device = device
        self._holds_slot = False
        self._queue_call: DelayedCall | None = None
        self._request = request
        self._clock = clock
        self._pool = pool
        self._metrics = metrics
        self._settings = settings
        self._tag = tag  # a keyed hash of the request id, for log lines (privllm.logs.request_tag)
        self._jitter = jitter
        self._events = SealedEvents(request, clock, settings.privacy, metrics)
        self._retry_call: DelayedCall | None = None
        self._chat: ChatRequest | None = None  # kept, for retries, only until the first delta
        self._tried: list[Node] = []
        self._node: Node | None = None
        self._translator: Any = ChatCompletionStream()
        self._pending: Deferred[Any] | None = None
        self._body: BodyStream | None = None
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._started = clock.seconds()
        self._last_upstream = self._sent_at = self._started
        self._first_delta = True
        self._open = False
        self.done: Deferred[None] = Deferred(lambda _: self._abort("client_gone"))

    def start(
        self, opened: OpenedRequest, encapsulated_key: bytes, refusal: SealedRefusal | None = None
    ) -> Deferred[None]:
        self._events.open(opened.response_secret, encapsulated_key)
        self._metrics.active_streams.inc()
        self._open = True
        if refusal is not None:  # refused after decryption: sealed at once, no slot taken
            final: dict[str, object] = {"type": "error", "code": refusal.code, "message": refusal.message}
            if refusal.retry_after is not None:
                final["retry_after"] = refusal.retry_after
            self._events.final(final)
            self._close(refusal.code)
            return self.done
        self._ticker.start(1.0, now=False)
        if self._slots is not None:
            if not self._slots.acquire(self._device):
                self._end_with_error("overloaded", "too many answers at once; try again shortly", outcome="overloaded")
                return self.done
            self._holds_slot = True
        try:
            self._chat = parse_chat_request(opened.plaintext, self._settings.limits)
        except BadChatRequest as e:
            self._end_with_error("bad_request", str(e), outcome="bad_request")
            return self.done
        del opened  # the request plaintext is not kept past this point
        self._attempt()
        return self.done

    # choosing a node, and trying again

    def _attempt(self) -> None:
        self._retry_call = None
        if self._queue_call is not None:
            if self._queue_call.active():
                self._queue_call.cancel()
            self._queue_call = None
        if self.done.called or self._chat is None:
            return
        now = self._clock.seconds()
        node = self._pool.choose(now, exclude=self._tried)
        if node is None and self._tried:
            # Every node was tried once (or there is only one): a retry may go to one again,
            # e.g. after a kept-alive connection the server had just closed.
            node = self._pool.choose(now)
        if node is None and self._pool.saturated(now):
            # Every node is busy: wait briefly in a bounded queue rather than slow anyone down.
            if self._pool.wait(self._attempt):
                self._queue_call = self._clock.callLater(self._settings.queue_timeout, self._queue_timed_out)
            else:
                self._end_with_error("overloaded", "every inference slot is busy", outcome="overloaded")
            return
        if node is None:
            self._end_with_error("upstream_failed", "no inference node is available", outcome="upstream_failed")
            return
        self._node = node
        self._tried.append(node)
        self._pool.take(node)
        body = node.dialect.body(self._chat)
        self._translator = node.dialect.translator(body)
        self._sent_at = self._last_upstream = now
        self._pending = node.client.post_stream(node.dialect.path, body)
        self._pending.addCallback(self._got_response, node, now)
        self._pending.addErrback(self._upstream_failed, node)

    def _queue_timed_out(self) -> None:
        self._queue_call = None
        self._pool.forget(self._attempt)
        self._end_with_error("overloaded", "every inference slot stayed busy", outcome="overloaded")

    def _release_node(self, node: Node, failed: bool) -> None:
        if node is not self._node:
            return
        self._node = None
        self._pool.release(node)
        if failed:
            node.breaker.failure(self._clock.seconds())
            self._metrics.node_failures.labels(node.name).inc()
        else:
            node.breaker.success()

    # upstream events

    def _got_response(self, response: Any, node: Node, sent: float) -> None:
        self._pending = None
        self._metrics.upstream_latency.labels(node.name).observe(self._clock.seconds() - sent)
        self._body = BodyStream(self._upstream_data)
        self._body.done.addCallbacks(self._upstream_ended, self._upstream_failed, errbackArgs=(node,))
        response.deliverBody(self._body)
        if response.code != 200:
            self._body.stop()

    def _upstream_data(self, data: bytes) -> None:
        self._last_upstream = self._clock.seconds()
        self._translate(lambda: self._translator.feed(data))

    def _upstream_ended(self, _: None) -> None:
        self._translate(self._translator.end)

    def _translate(self, step: Callable[[], list[Delta | Finished]]) -> None:
        if self.done.called or self._node is None:
            return
        try:
            events = step()
        except UpstreamProtocolError:
            self._upstream_failed(Failure(), self._node)
            return
        for event in events:
            if isinstance(event, Delta):
                self._send_delta(event.text)
            else:
                self._send_done(event)

    def _upstream_failed(self, failure: Failure, node: Node) -> None:
        if self.done.called or failure.check(CancelledError) or node is not self._node:
            return
        self._release_node(node, failed=True)
        self._stop_upstream()
        log.info("chat {rid}: upstream failed ({kind})", rid=self._tag, kind=getattr(failure.type, "__name__", "?"))
        if self._first_delta and len(self._tried) <= self._settings.retries:
            delay = backoff(len(self._tried) - 1, self._settings.retry_base, self._settings.retry_cap, self._jitter)
            self._retry_call = self._clock.callLater(delay, self._attempt)
            return
        if failure.check(neterror.TimeoutError, neterror.ConnectingCancelledError):
            self._end_with_error("timeout", "the inference server could not be reached in time", outcome="timeout")
            return
        self._end_with_error("upstream_failed", "the inference server failed", outcome="upstream_failed")

    # what the client gets

    def _send_delta(self, text: str) -> None:
        if self._first_delta:
            self._first_delta = False
            self._chat = None  # no more retries: the conversation is dropped
            self._metrics.time_to_first_chunk.observe(self._clock.seconds() - self._started)
        self._events.delta(text)

    def _send_done(self, finished: Finished) -> None:
        if self._node is not None:
            self._release_node(self._node, failed=False)
        usage = {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens}
        self._metrics.tokens.labels("prompt").inc(finished.prompt_tokens)
        self._metrics.tokens.labels("completion").inc(finished.completion_tokens)
        self._events.final({"type": "done", "finish_reason": finished.finish_reason, "usage": usage})
        self._close("ok")

    def _end_with_error(self, code: str, message: str, outcome: str) -> None:
        self._events.final({"type": "error", "code": code, "message": message})
        self._close(outcome)

    def _tick(self) -> None:
        now = self._clock.seconds()
        s = self._settings
        waiting_first = self._first_delta and self._retry_call is None
        if now - self._started >= s.request_timeout:
            self._time_out("the answer took longer than allowed")
        elif waiting_first and now - self._sent_at >= s.first_token_timeout:
            self._time_out("the inference server did not start answering")
        elif not self._first_delta and now - self._last_upstream >= s.idle_timeout:
            self._time_out("the inference server stopped answering")
        else:
            self._events.tick(s.keepalive)

    def _time_out(self, message: str) -> None:
        if self._node is not None:
            self._release_node(self._node, failed=True)
        self._end_with_error("timeout", message, outcome="timeout")

    # ending

    def _stop_upstream(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self._body is not None:
            body, self._body = self._body, None
            if self._translator.upstream_complete and not body.done.called:
                self._linger(body)
            else:
                body.stop()

    def _linger(self, body: BodyStream) -> None:
        """The upstream answered in full and its response is about to end: read that end, so
        the connection goes back to the pool (a new one per chat costs time to first token)."""
        stop = self._clock.callLater(UPSTREAM_LINGER, body.stop)
        body.done.addBoth(lambda _: stop.cancel() if stop.active() else None)

    def _release(self, outcome: str) -> None:
        self._events.close()
        for call in (self._retry_call, self._queue_call):
            if call is not None and call.active():
                call.cancel()
        self._pool.forget(self._attempt)
        self._chat = None
        if self._holds_slot and self._slots is not None:
            self._holds_slot = False
            self._slots.release(self._device)
        if self._node is not None:
            node, self._node = self._node, None
            self._pool.release(node)
        self._stop_upstream()
        if self._ticker.running:
            self._ticker.stop()
        if self._open:
            self._open = False
            self._metrics.active_streams.dec()
            self._metrics.requests.labels(outcome).inc()
            log.info("chat {rid} ended: {outcome}", rid=self._tag, outcome=outcome)

    def _close(self, outcome: str) -> None:
        self._release(outcome)
        if not self.done.called:
            self.done.callback(None)

    def _abort(self, outcome: str) -> None:
        """The client went away (Klein cancels our Deferred): stop llama-server generating at once."""
        self._release(outcome)
