"""
One admitted chat, wired to sockets and time: privllm.protocol.life decides, this adapter
does. It feeds the chat's state machine events (a node chosen, a response, a delta, a tick,
the client leaving) and performs the actions it returns: sending to a node, releasing it,
scheduling a retry, and telling privllm.web.sealed what the client gets.

Everything here happens after decryption succeeded, so every failure is sent sealed. Every
event goes through `_feed`: an exception while handling one (a bug, or input nobody thought
of) is answered by the machine's `crash`, which ends the chat with a sealed `internal`
error; whatever way the chat ends, `_give_back` returns the node lease, the queue place,
the timers and the upstream connection (the route gives back the stream's lease in the
admission state when `done` fires). The upstream body (which holds the
conversation) is kept only until the first delta arrives, for retries.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from ..body import BodyStream, read_bounded
from ..config.schema import Config, Privacy
from ..protocol import life
from ..protocol.admission import SealedRefusal
from ..protocol.chat import BadChatRequest, ChatLimits, ChatRequest, parse_chat_request
from ..protocol.life import ChatLife, Finished, Timeouts, Verdict
from ..protocol.request import OpenedRequest
from ..upstream.contracts import Translator
from ..upstream.events import (
    MAX_REFUSAL_BYTES,
    Delta,
    UpstreamProtocolError,
    UpstreamRequestError,
    refusal_code,
)
from ..upstream.pool import Node, NodePool, backoff
from .metrics import RouterMetrics
from .sealed import Framing, SealedEvents, SseFraming

__all__ = ["UPSTREAM_LINGER", "ChatStream", "StreamSettings", "node_fault"]

log = Logger()

UPSTREAM_LINGER = 5.0  # seconds to wait for the end of an upstream response already complete


@dataclass(frozen=True)
class StreamSettings:
    """What one chat is held to. No defaults here: they are the configuration's (from_config)."""

    limits: ChatLimits
    keepalive: float
    idle_timeout: float
    privacy: Privacy
    first_token_timeout: float
    request_timeout: float
    retries: int
    retry_base: float
    retry_cap: float
    queue_timeout: float

    @classmethod
    def from_config(cls, config: Config) -> StreamSettings:
        backend = config.backend
        return cls(
            config.chat_limits(),
            keepalive=config.server.keepalive_seconds,
            idle_timeout=backend.idle_timeout,
            privacy=config.privacy,
            first_token_timeout=backend.first_token_timeout,
            request_timeout=backend.request_timeout,
            retries=backend.retries,
            retry_base=backend.retry_base,
            retry_cap=backend.retry_cap,
            queue_timeout=config.load.queue_timeout,
        )


def node_fault(failure: Failure) -> life.Fault:
    """What an upstream exception says about the node."""
    if failure.check(neterror.TimeoutError, neterror.ConnectingCancelledError):
        return life.Fault.TIMEOUT
    if failure.check(neterror.ConnectError):  # refused, no socket, no route: the node is down
        return life.Fault.DOWN
    return life.Fault.SERVER


class ChatStream:
    def __init__(
        self,
        request: Request,
        clock: IReactorTime,
        pool: NodePool,
        metrics: RouterMetrics,
        settings: StreamSettings,
        tag: str = "-",
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._request = request
        self._clock = clock
        self._pool = pool
        self._metrics = metrics
        self._settings = settings
        self._tag = tag  # a keyed hash of the request id, for log lines (privllm.logs.request_tag)
        s = settings
        self._life = ChatLife(
            clock.seconds(),
            s.retries,
            lambda attempt: backoff(attempt, s.retry_base, s.retry_cap, jitter),
            Timeouts(s.first_token_timeout, s.idle_timeout, s.request_timeout),
        )
        self._events = SealedEvents(request, clock, s.privacy, metrics)
        self._actions: deque[life.Action] = deque()
        self._performing = False
        # what the chat holds, each given back by _give_back
        self._chat: ChatRequest | None = None  # kept, for retries, only until the first delta
        self._node: Node | None = None
        self._attempt = 0  # numbers upstream callbacks, so a stale one is told apart
        self._pending: Deferred[Any] | None = None
        self._body: BodyStream | None = None
        self._translator: Translator | None = None
        self._timer: IDelayedCall | None = None  # the retry backoff or the queue timeout
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._tried: list[Node] = []
        self._queued = False  # waiting in the node pool's queue: counted in the queued_streams gauge
        self._first_data_at: float | None = None  # the attempt's first upstream body bytes
        self._token_rate: float | None = None  # the answer's, counted if it ends ok
        self.done: Deferred[None] = Deferred(lambda _: self._feed(self._life.client_gone))

    def start(
        self, opened: OpenedRequest, encapsulated_key: bytes, refusal: SealedRefusal | None = None
    ) -> Deferred[None]:
        """Protocol v1: the answer is an event stream of sealed chunks."""
        framing = SseFraming(opened.response_secret, encapsulated_key, self._settings.privacy.pad_to)
        return self.run(framing, opened.plaintext, refusal)

    def run(self, framing: Framing, plaintext: bytes, refusal: SealedRefusal | None = None) -> Deferred[None]:
        """Send the framing's opening, then run the chat on `plaintext` (v1's chat request); a
        refusal after decryption ends it sealed at once. If even the opening cannot be sent,
        nothing can be sealed: the route's Deferred fails."""
        try:
            self._events.open(framing)
        except Exception:
            log.failure("chat {rid}: the stream could not start", rid=self._tag)
            return fail()
        self._metrics.active_streams.inc()
        self._ticker.start(1.0, now=False)
        self._feed(lambda: self._begin(plaintext, refusal))
        return self.done

    def _begin(self, plaintext: bytes, refusal: SealedRefusal | None) -> list[life.Action]:
        if refusal is not None:
            self._count_refusal(refusal.reason)
            return self._life.refused(refusal.code, refusal.message, refusal.retry_after)
        try:
            self._chat = parse_chat_request(plaintext, self._settings.limits)
        except BadChatRequest as e:
            return self._life.refused(e.code, str(e))
        return self._life.begin()

    # the machine: events in, actions out

    def _feed(self, event: Callable[[], list[life.Action]]) -> None:
        """Hand one event to the machine and perform what it says. While actions are being
        performed, an event they raise (a connection refused at once, a body delivered at
        once) only queues its actions behind theirs."""
        outermost = not self._performing
        self._performing = True
        try:
            try:
                self._actions.extend(event())
            except Exception:
                self._crashed()
            if outermost:
                self._perform_queued()
        finally:
            if outermost:
                self._performing = False

    def _perform_queued(self) -> None:
        """Perform the queued actions. What several of them send (the deltas of one upstream
        read) leaves in one write: one HTTP chunk, and less work in the TLS layer."""
        if len(self._actions) > 1:
            self._events.hold()
        while self._actions:
            action = self._actions.popleft()
            try:
                self._perform(action)
            except Exception:
                self._crashed()
            if not self._actions:
                try:
                    self._events.release()
                except Exception:
                    self._crashed()  # the crash's own actions, if any, are written at once

    def _crashed(self) -> None:
        """A bug while handling an event or performing an action. A live chat ends sealed
        `internal`; a chat already on its way out goes on with the actions queued (its
        Final and End), so it still ends once and gives everything back."""
        log.failure("chat {rid}: internal error", rid=self._tag)
        if not self._life.ended:
            self._actions.clear()
            self._actions.extend(self._life.crash())

    def _perform(self, action: life.Action) -> None:
        if isinstance(action, life.SendDelta):
            self._events.delta(action.text)
        elif isinstance(action, life.Attempt):
            self._feed(self._choose)
        elif isinstance(action, life.ForgetConversation):
            self._chat = None
            self._metrics.time_to_first_token.observe(self._clock.seconds() - self._life.started)
        elif isinstance(action, life.ReleaseNode):
            self._release_node(action.verdict)
        elif isinstance(action, life.ScheduleRetry):
            self._timer = self._clock.callLater(action.delay, self._feed, self._life.retry_due)
        elif isinstance(action, life.Final):
            self._events.final(action.chunk)
        elif isinstance(action, life.End):
            self._end(action.outcome)

    # choosing a node, and sending

    def _choose(self) -> list[life.Action]:
        self._timer = None
        assert self._chat is not None
        now = self._clock.seconds()
        node = self._pool.choose(now, exclude=self._tried)
        if node is None and self._tried:
            # Every node was tried once (or there is only one): a retry may go to one again,
            # e.g. after a kept-alive connection the server had just closed.
            node = self._pool.choose(now)
        if node is None and self._pool.saturated(now):
            # Every node is busy: wait briefly in a bounded queue rather than slow anyone down.
            if not self._pool.wait(self._slot_free):
                return self._no_node(self._life.queue_full())
            self._set_queued(True)
            self._timer = self._clock.callLater(self._settings.queue_timeout, self._feed, self._queue_timed_out)
            return self._life.queued()
        if node is None:
            return self._no_node(self._life.no_node())
        # Taken at once (choose may have handed out its breaker's probe): from here every way
        # out releases the node with a verdict.
        self._take(node)
        return self._life.taken(now) + self._check(node)

    def _check(self, node: Node) -> list[life.Action]:
        """Send the conversation if it fits the node's context; ask the node's tokenizer when
        the bounds cannot tell."""
        assert self._chat is not None
        body = node.dialect.body(self._chat)
        lower, upper = node.dialect.prompt_bounds(body)
        context = node.client.context
        if context is None or upper < context:
            return self._send(node, body)
        if lower >= context:
            return self._life.too_long()
        self._watch(node.client.count_tokens(node.dialect.count_text(body)), self._counted, body)
        return []

    def _slot_free(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._set_queued(False)
        self._feed(self._life.slot_free)

    def _queue_timed_out(self) -> list[life.Action]:
        self._timer = None
        self._leave_queue()
        return self._no_node(self._life.queue_timed_out())

    def _set_queued(self, queued: bool) -> None:
        if queued != self._queued:
            self._queued = queued
            self._metrics.queued_streams.inc(1 if queued else -1)

    def _count_refusal(self, reason: str | None) -> None:
        if reason is not None:
            self._metrics.refusals.labels(reason).inc()

    def _no_node(self, actions: list[life.Action]) -> list[life.Action]:
        """No node took the chat: counted as a refusal, if the machine took the event."""
        if actions:
            self._count_refusal("no_node")
        return actions

    def _take(self, node: Node) -> None:
        self._node = node
        self._tried.append(node)
        self._pool.take(node)

    def _send(self, node: Node, body: dict[str, Any]) -> list[life.Action]:
        actions = self._life.sent(self._clock.seconds())
        self._first_data_at = None
        self._translator = node.dialect.translator(body)
        self._watch(node.client.post_stream(node.dialect.path, body), self._got_response, self._clock.seconds())
        return actions

    def _watch(self, pending: Deferred[Any], on_result: Callable[..., list[life.Action]], *args: Any) -> None:
        """Feed the result of an upstream request, unless it belongs to an earlier attempt."""
        self._attempt += 1
        attempt = self._attempt
        self._pending = pending

        def result(value: Any) -> None:
            if attempt == self._attempt:
                self._pending = None
                self._feed(lambda: on_result(value, *args))

        def failed(failure: Failure) -> None:
            if attempt == self._attempt:
                self._pending = None
                self._upstream_failed(failure)

        pending.addCallbacks(result, failed)

    def _counted(self, tokens: int, body: dict[str, Any]) -> list[life.Action]:
        assert self._node is not None
        context = self._node.client.context
        if context is not None and self._node.dialect.counted_lower(body, tokens) >= context:
            return self._life.too_long()
        return self._send(self._node, body)

    # upstream events

    def _got_response(self, response: Any, sent: float) -> list[life.Action]:
        assert self._node is not None
        self._metrics.upstream_first_byte.labels(self._node.name).observe(self._clock.seconds() - sent)
        if response.code != 200:
            self._watch(read_bounded(response, MAX_REFUSAL_BYTES), self._refused, response.code)
            return []
        attempt = self._attempt  # the body's pieces count only while this attempt is the current one
        self._body = BodyStream(lambda data: self._upstream_data(data) if attempt == self._attempt else None)
        self._body.done.addCallbacks(
            lambda _: self._upstream_ended(attempt),
            lambda f: self._upstream_failed(f) if attempt == self._attempt else None,
        )
        response.deliverBody(self._body)
        return []

    def _refused(self, body: bytes, status: int) -> list[life.Action]:
        code = refusal_code(status, body)
        if code is not None:
            return self._life.request_error(code)
        log.info("chat {rid}: upstream answered {kind}", rid=self._tag, kind=status)
        # 503: llama-server loading its model, or a node whose llama-server is gone.
        return self._life.node_failed(life.Fault.DOWN if status == 503 else life.Fault.SERVER)

    def _upstream_data(self, data: bytes) -> None:
        if self._first_data_at is None:
            self._first_data_at = self._clock.seconds()
        self._life.upstream_activity(self._clock.seconds())
        self._translate(lambda translator: translator.feed(data))

    def _upstream_ended(self, attempt: int) -> None:
        if attempt == self._attempt:
            self._translate(lambda translator: translator.end())

    def _translate(self, step: Callable[[Translator], list[Delta | Finished]]) -> None:
        def event() -> list[life.Action]:
            assert self._translator is not None  # made with the request whose body this is
            try:
                pieces = step(self._translator)
            except UpstreamRequestError as e:
                return self._life.request_error(e.code)
            except UpstreamProtocolError:
                log.info("chat {rid}: upstream failed ({kind})", rid=self._tag, kind="UpstreamProtocolError")
                return self._life.node_failed(life.Fault.SERVER)
            now = self._clock.seconds()
            actions: list[life.Action] = []
            for piece in pieces:
                if isinstance(piece, Delta):
                    actions += self._life.delta(piece.text, now)
                else:
                    actions += self._finished(piece)
            return actions

        self._feed(event)

    def _finished(self, finished: Finished) -> list[life.Action]:
        self._metrics.tokens.labels("prompt").inc(finished.prompt_tokens)
        self._metrics.tokens.labels("completion").inc(finished.completion_tokens)
        # From the first bytes of the body (llama-server sends them with the first token, of
        # whatever channel) to the last: every token, reasoning ones too, as the node made them.
        # An answer that came whole in one read has no measurable rate.
        if self._first_data_at is not None and finished.completion_tokens >= 2:
            generating = self._clock.seconds() - self._first_data_at
            self._token_rate = (finished.completion_tokens - 1) / generating if generating > 0 else None
        return self._life.finished(finished)

    def _upstream_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        log.info("chat {rid}: upstream failed ({kind})", rid=self._tag, kind=getattr(failure.type, "__name__", "?"))
        self._feed(lambda: self._life.node_failed(node_fault(failure)))

    def _tick(self) -> None:
        self._feed(lambda: self._life.tick(self._clock.seconds()))
        if not self._life.ended:
            self._feed(self._keep_alive)

    def _keep_alive(self) -> list[life.Action]:
        """Fed as an event: a failing keep-alive ends the chat sealed `internal`; raised from
        the ticker, it stopped it, and with it every timeout of the chat."""
        self._events.tick(self._settings.keepalive)
        return []

    # giving back

    def _release_node(self, verdict: Verdict) -> None:
        node, self._node = self._node, None
        self._stop_upstream(linger=verdict is Verdict.OK)
        if node is None:
            return
        try:
            if verdict is Verdict.OK:
                node.breaker.success()
            elif verdict is Verdict.NONE:
                node.breaker.abandon()
            else:
                node.breaker.failure(self._clock.seconds())
                self._metrics.node_failures.labels(node.name).inc()
                if verdict is Verdict.DOWN:
                    self._pool.mark_down(node)
        finally:
            self._pool.release(node)

    def _stop_upstream(self, linger: bool = False) -> None:
        """Drop the upstream request. `linger`: the node answered in full and its response is
        about to end; read that end, so the connection goes back to the pool."""
        self._attempt += 1  # whatever the last request still says is stale now
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self._body is not None:
            body, self._body = self._body, None
            complete = self._translator is not None and self._translator.upstream_complete
            if linger and complete and not body.done.called:
                self._linger(body)
            else:
                body.stop()

    def _linger(self, body: BodyStream) -> None:
        """The upstream answered in full and its response is about to end: read that end, so
        the connection goes back to the pool (a new one per chat costs time to first token)."""
        stop = self._clock.callLater(UPSTREAM_LINGER, body.stop)
        body.done.addBoth(lambda _: stop.cancel() if stop.active() else None)

    def _end(self, outcome: str) -> None:
        try:
            self._give_back()
            self._metrics.active_streams.dec()
            self._metrics.requests.labels(outcome).inc()
            if outcome == "ok":
                self._metrics.answer_time.observe(self._clock.seconds() - self._life.started)
                if self._token_rate is not None:
                    self._metrics.token_rate.observe(self._token_rate)
            log.info("chat {rid} ended: {outcome}", rid=self._tag, outcome=outcome)
        finally:
            # When the client left, Klein cancelled `done` itself: it fails with CancelledError.
            if outcome != "client_gone" and not self.done.called:
                self.done.callback(None)

    def _give_back(self) -> None:
        """Everything the chat holds, each step on its own so one failing cannot keep the rest."""
        for step in (
            self._events.close,
            self._release_timers,
            self._leave_queue,
            lambda: self._release_node(Verdict.NONE),
        ):
            try:
                step()
            except Exception:
                log.failure("chat {rid}: giving back failed", rid=self._tag)
        self._chat = None

    def _release_timers(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._ticker.running:
            self._ticker.stop()

    def _leave_queue(self) -> None:
        self._pool.forget(self._slot_free)
        self._set_queued(False)
