"""
Translate llama-server's OpenAI-compatible chat stream into privllm events, sans-IO.

Only the content deltas, the finish reason and token counts cross over; model names,
ids, fingerprints and timings stay behind.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from ..protocol.chat import ChatRequest
from ..protocol.sse import SSEError, SSEEvent, SSEParser
from .instructions import INSTRUCTIONS

FINISH_REASONS = {"stop": "stop", "length": "length"}


class Delta(NamedTuple):  # tuples: made once per streamed delta, cheaply
    text: str


class Finished(NamedTuple):
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class UpstreamProtocolError(Exception):
    """The upstream stream was malformed, reported an error, or ended early."""


def sse_events(parser: SSEParser, data: bytes) -> list[SSEEvent]:
    try:
        return parser.feed(data)
    except SSEError as e:
        raise UpstreamProtocolError(str(e)) from e


def event_object(event: SSEEvent) -> dict[str, Any]:
    """An upstream event's JSON object; an error event or anything else is a protocol error."""
    try:
        obj = json.loads(event.data)
    except ValueError as e:
        raise UpstreamProtocolError("upstream event is not JSON") from e
    if not isinstance(obj, dict) or "error" in obj:
        raise UpstreamProtocolError("upstream reported an error")
    return obj


def chat_messages(chat: ChatRequest) -> list[dict[str, str]]:
    """The conversation with the verbosity instruction as (the start of) the system message."""
    messages = [{"role": m.role, "content": m.content} for m in chat.messages]
    instruction = INSTRUCTIONS[chat.verbosity]
    if messages and messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": instruction + "\n\n" + messages[0]["content"]}
    else:
        messages.insert(0, {"role": "system", "content": instruction})
    return messages


def completion_body(chat: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": chat_messages(chat),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": chat.max_tokens,
    }
    if chat.temperature is not None:
        body["temperature"] = chat.temperature
    if chat.top_p is not None:
        body["top_p"] = chat.top_p
    return body


def _count(usage: object, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class ChatDialect:
    """llama-server's OpenAI-compatible chat endpoint: it applies the model's chat template."""

    path = "/v1/chat/completions"
    body = staticmethod(completion_body)

    @staticmethod
    def translator(body: dict[str, Any]) -> ChatCompletionStream:
        return ChatCompletionStream()


class ChatCompletionStream:
    def __init__(self) -> None:
        self._sse = SSEParser()
        self._finish_reason: str | None = None
        self._usage: object = None
        self.finished = False
        self.upstream_complete = False  # [DONE] was seen: the response ends, its connection is reusable

    def feed(self, data: bytes) -> list[Delta | Finished]:
        out: list[Delta | Finished] = []
        for event in sse_events(self._sse, data):
            out.extend(self._event(event))
        return out

    def end(self) -> list[Delta | Finished]:
        """The upstream body ended. Without a finish reason the answer was cut short."""
        if self.finished:
            return []
        if self._finish_reason is None:
            raise UpstreamProtocolError("upstream stream ended without a finish reason")
        return [self._finish()]

    def _finish(self) -> Finished:
        self.finished = True
        return Finished(
            self._finish_reason or "stop",
            _count(self._usage, "prompt_tokens"),
            _count(self._usage, "completion_tokens"),
        )

    def _event(self, event: SSEEvent) -> list[Delta | Finished]:
        if self.finished:
            return []
        if event.data == "[DONE]":
            self.upstream_complete = True
            return self.end()
        obj = event_object(event)
        if obj.get("usage") is not None:
            self._usage = obj["usage"]
        out: list[Delta | Finished] = []
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                raise UpstreamProtocolError("malformed choice")
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                out.append(Delta(text))
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self._finish_reason = FINISH_REASONS.get(reason, "stop")
        return out
