"""
The life of one admitted chat, sans-IO: the state it is in, what each event does to it, and
what the adapter (privllm.web.chat) must do about it. Fed events and time; returns actions.

    starting ──taken──▶ checking ──sent──▶ attempting ──delta──▶ streaming ──finished──▶ done
      │  ▲                 │                   │
      │  └──retry due── retrying ◀── node failed (before the first delta, while retries are left)
      └──busy──▶ queued ──slot free──▶ starting

`checking`: a node is taken and the conversation is checked against its context (its
tokenizer is asked when the bounds cannot decide). A refusal after decryption ends a chat
that has not started; a node's refusal of the request itself, a node failure, a timeout,
the client leaving or a programming error end it from the states where they can happen.
Each way into `done` or `failed` emits, in this order: ReleaseNode when a node lease is
held (with the verdict on the node: a failure counts against it only for what the node
did: connection failures, 5xx, broken streams, timeouts), exactly one Final (none when the
client has gone: nobody reads it), then End. Once ended, every event is ignored: late
upstream data changes nothing. An event a live state has no transition for is a
programming error (LifeError); the adapter answers it with `crash`, which ends the chat
with a sealed `internal` error.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import ProtocolError

__all__ = [
    "ACCEPTS",
    "BEFORE_FIRST_DELTA",
    "ERROR_CODES",
    "HOLDING_NODE",
    "LIVE",
    "MESSAGES",
    "Action",
    "Attempt",
    "ChatLife",
    "End",
    "Fault",
    "Final",
    "Finished",
    "ForgetConversation",
    "LifeError",
    "ReleaseNode",
    "ScheduleRetry",
    "SendDelta",
    "State",
    "Timeouts",
    "Verdict",
]


class State(enum.Enum):
    STARTING = "starting"  # admitted; no node holds it
    QUEUED = "queued"  # every node is busy: waiting in the pool's bounded queue
    CHECKING = "checking"  # a node is taken; the conversation is checked against its context
    ATTEMPTING = "attempting"  # sent to a node; nothing has reached the client yet
    RETRYING = "retrying"  # a node failed before the first delta: waiting to try again
    STREAMING = "streaming"  # the first delta reached the client: no more retries
    DONE = "done"
    FAILED = "failed"


LIVE = frozenset(State) - {State.DONE, State.FAILED}
HOLDING_NODE = frozenset({State.CHECKING, State.ATTEMPTING, State.STREAMING})
BEFORE_FIRST_DELTA = frozenset({State.CHECKING, State.ATTEMPTING})


class Fault(enum.Enum):
    """What went wrong with a node (a request's own fault is a request error instead)."""

    DOWN = "down"  # it refused the connection, or answered 503: down, not just slow
    TIMEOUT = "timeout"  # connecting, or waiting for the first token, took too long
    SERVER = "server"  # 5xx, an error event of the server's own, a broken or cut stream


# The sealed error codes (docs/protocol.md): after decryption, every failure is one of these.
ERROR_CODES = frozenset(
    {"bad_request", "too_long", "overloaded", "rate_limited", "upstream_failed", "timeout", "internal"}
)
MESSAGES = {
    "bad_request": "the inference server refused the request",
    "too_long": "the conversation is longer than the model's context",
    "internal": "the router failed; the answer ends here",
    "upstream_failed": "the inference server failed",
    "no_node": "no inference node is available",
    "queue_full": "every inference slot is busy",
    "queue_timeout": "every inference slot stayed busy",
    "connect_timeout": "the inference server could not be reached in time",
    "first_token_timeout": "the inference server did not start answering",
    "idle_timeout": "the inference server stopped answering",
    "request_timeout": "the answer took longer than allowed",
}


# actions: what the adapter does, in the order given


class Attempt(NamedTuple):
    """Choose a node, then report `taken`, `queued`, `no_node` or `queue_full`."""


class SendDelta(NamedTuple):
    text: str


class ForgetConversation(NamedTuple):
    """The first delta went out: no retry will need the conversation again."""


class Verdict(enum.Enum):
    """What a node lease's end says about the node, for its circuit breaker."""

    OK = "ok"  # it answered (an answer, or a refusal of the request itself)
    FAILED = "failed"  # it failed: counts toward opening its breaker
    DOWN = "down"  # it refused the connection or said 503: failed, and down until its health check passes
    NONE = "none"  # the chat ended for another reason (client gone, a bug): no verdict


class ReleaseNode(NamedTuple):
    """Give the node lease back and stop its upstream request, with the verdict on the node."""

    verdict: Verdict


class ScheduleRetry(NamedTuple):
    delay: float


class Final(NamedTuple):
    chunk: dict[str, Any]


class End(NamedTuple):
    """Give back everything the chat holds (slot, timers, queue place, connection); count `outcome`."""

    outcome: str


Action = Attempt | SendDelta | ForgetConversation | ReleaseNode | ScheduleRetry | Final | End


class LifeError(ProtocolError):
    """An event that the current state has no transition for: a bug in the adapter."""

    code = "no_transition"


class Finished(NamedTuple):
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Timeouts:
    """The configuration's backend timeouts (privllm.web.chat.StreamSettings); no defaults here."""

    first_token: float  # silence from a node before its first delta (Harmony reasons first)
    idle: float  # between upstream pieces once streaming
    request: float  # the whole chat


# Which events each live state accepts. Anything else in a live state is a LifeError.
ACCEPTS: dict[str, frozenset[State]] = {
    "refused": frozenset({State.STARTING}),
    "too_long": frozenset({State.CHECKING}),
    "sent": frozenset({State.CHECKING}),
    "taken": frozenset({State.STARTING}),
    "queued": frozenset({State.STARTING}),
    "no_node": frozenset({State.STARTING}),
    "queue_full": frozenset({State.STARTING}),
    "slot_free": frozenset({State.QUEUED}),
    "queue_timed_out": frozenset({State.QUEUED}),
    "delta": frozenset({State.ATTEMPTING, State.STREAMING}),
    "finished": frozenset({State.ATTEMPTING, State.STREAMING}),
    "request_error": HOLDING_NODE,
    "node_failed": HOLDING_NODE,
    "retry_due": frozenset({State.RETRYING}),
    "tick": LIVE,
    "client_gone": LIVE,
    "crash": LIVE,
}


class ChatLife:
    def __init__(self, now: float, retries: int, retry_delay: Callable[[int], float], timeouts: Timeouts) -> None:
        """`retry_delay(n)`: the pause before the (n+1)th attempt, n counting from 0."""
        self.state = State.STARTING
        self._retries = retries
        self._retry_delay = retry_delay
        self._timeouts = timeouts
        self.started = now
        self._last_upstream = now
        self.attempts = 0
        self.outcome: str | None = None

    @property
    def ended(self) -> bool:
        return self.state not in LIVE

    def _accept(self, event: str) -> bool:
        """False when the chat has ended (the event is ignored); LifeError when it is out of place."""
        if self.ended:
            return False
        if self.state not in ACCEPTS[event]:
            raise LifeError(f"{event} in state {self.state.value}")
        return True

    # the start

    def begin(self) -> list[Action]:
        if self.state is not State.STARTING or self.attempts:
            raise LifeError("begin twice")
        return [Attempt()]

    def refused(self, code: str, message: str, retry_after: int | None = None) -> list[Action]:
        """Refused after decryption: bad plaintext, the device's rate or stream cap."""
        if not self._accept("refused"):
            return []
        chunk: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if retry_after is not None:
            chunk["retry_after"] = retry_after
        return self._end(State.FAILED, code, chunk)

    # choosing a node

    def taken(self, now: float) -> list[Action]:
        """A node is taken: the conversation is checked against its context before it is sent."""
        if not self._accept("taken"):
            return []
        self.attempts += 1
        self.state = State.CHECKING
        self._last_upstream = now
        return []

    def sent(self, now: float) -> list[Action]:
        if self._accept("sent"):
            self.state = State.ATTEMPTING
            self._last_upstream = now
        return []

    def too_long(self) -> list[Action]:
        """The router's own count: the node did nothing, so no verdict on it."""
        if not self._accept("too_long"):
            return []
        return self._end(State.FAILED, "too_long", self._error("too_long", "too_long"))

    def queued(self) -> list[Action]:
        if self._accept("queued"):
            self.state = State.QUEUED
        return []

    def slot_free(self) -> list[Action]:
        if not self._accept("slot_free"):
            return []
        self.state = State.STARTING
        return [Attempt()]

    def no_node(self) -> list[Action]:
        if not self._accept("no_node"):
            return []
        return self._end(State.FAILED, "upstream_failed", self._error("upstream_failed", "no_node"))

    def queue_full(self) -> list[Action]:
        if not self._accept("queue_full"):
            return []
        return self._end(State.FAILED, "overloaded", self._error("overloaded", "queue_full"))

    def queue_timed_out(self) -> list[Action]:
        if not self._accept("queue_timed_out"):
            return []
        return self._end(State.FAILED, "overloaded", self._error("overloaded", "queue_timeout"))

    # what the node says

    def delta(self, text: str, now: float) -> list[Action]:
        if not self._accept("delta"):
            return []
        self._last_upstream = now
        if self.state is State.STREAMING:
            return [SendDelta(text)]
        self.state = State.STREAMING
        return [ForgetConversation(), SendDelta(text)]

    def finished(self, finished: Finished) -> list[Action]:
        if not self._accept("finished"):
            return []
        usage = {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens}
        chunk = {"type": "done", "finish_reason": finished.finish_reason, "usage": usage}
        return self._end(State.DONE, "ok", chunk, Verdict.OK)

    def request_error(self, code: str) -> list[Action]:
        """The node refused the request itself (HTTP 400, a request error event): the node is fine."""
        if not self._accept("request_error"):
            return []
        if code not in ("bad_request", "too_long"):
            raise LifeError(f"not a request error: {code}")
        return self._end(State.FAILED, code, self._error(code, code), Verdict.OK)

    def node_failed(self, fault: Fault) -> list[Action]:
        if not self._accept("node_failed"):
            return []
        verdict = Verdict.DOWN if fault is Fault.DOWN else Verdict.FAILED
        if self.state in BEFORE_FIRST_DELTA and self.attempts <= self._retries:
            self.state = State.RETRYING
            return [ReleaseNode(verdict), ScheduleRetry(self._retry_delay(self.attempts - 1))]
        if fault is Fault.TIMEOUT:
            return self._end(State.FAILED, "timeout", self._error("timeout", "connect_timeout"), verdict)
        return self._end(State.FAILED, "upstream_failed", self._error("upstream_failed", "upstream_failed"), verdict)

    def retry_due(self) -> list[Action]:
        if not self._accept("retry_due"):
            return []
        self.state = State.STARTING
        return [Attempt()]

    def upstream_activity(self, now: float) -> None:
        """Bytes came from the node (not necessarily a delta): it is not idle."""
        if self.state in HOLDING_NODE:
            self._last_upstream = now

    # time, and the client

    def tick(self, now: float) -> list[Action]:
        if not self._accept("tick"):
            return []
        t = self._timeouts
        if now - self.started >= t.request:
            return self._end(State.FAILED, "timeout", self._error("timeout", "request_timeout"), Verdict.FAILED)
        if self.state in BEFORE_FIRST_DELTA and now - self._last_upstream >= t.first_token:
            return self._end(State.FAILED, "timeout", self._error("timeout", "first_token_timeout"), Verdict.FAILED)
        if self.state is State.STREAMING and now - self._last_upstream >= t.idle:
            return self._end(State.FAILED, "timeout", self._error("timeout", "idle_timeout"), Verdict.FAILED)
        return []

    def client_gone(self) -> list[Action]:
        if not self._accept("client_gone"):
            return []
        return self._end(State.FAILED, "client_gone", None)

    def crash(self) -> list[Action]:
        """A programming error while handling this chat: end it sealed, give everything back."""
        if self.ended:
            return []
        return self._end(State.FAILED, "internal", self._error("internal", "internal"))

    # ending

    @staticmethod
    def _error(code: str, why: str) -> dict[str, Any]:
        return {"type": "error", "code": code, "message": MESSAGES[why]}

    def _end(
        self, state: State, outcome: str, chunk: dict[str, Any] | None, verdict: Verdict = Verdict.NONE
    ) -> list[Action]:
        """The one way out: release a held node with `verdict`, one Final (unless nobody is
        there to read it), then End."""
        actions: list[Action] = []
        if self.state in HOLDING_NODE:
            actions.append(ReleaseNode(verdict))
        if chunk is not None:
            actions.append(Final(chunk))
        actions.append(End(outcome))
        self.state = state
        self.outcome = outcome
        return actions
