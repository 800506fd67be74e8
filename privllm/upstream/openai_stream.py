"""
Translate llama-server's OpenAI-compatible chat stream into privllm events, sans-IO.

Only the content deltas, the finish reason and token counts cross over; model names,
ids, fingerprints and timings stay behind.
"""

from __future__ import annotations

from typing import Any

from ..protocol.chat import ChatRequest
from ..protocol.encoding import is_scalar_text
from ..protocol.life import Finished
from ..protocol.sse import SSEEvent, SSEParser
from .events import Delta, UpstreamProtocolError, event_object, sse_events
from .instructions import INSTRUCTIONS

__all__ = [
    "FINISH_REASONS",
    "MAX_COUNT",
    "TEMPLATE_TOKENS",
    "TEMPLATE_TOKENS_PER_MESSAGE",
    "ChatCompletionStream",
    "ChatDialect",
    "chat_messages",
    "completion_body",
    "contents",
    "template_allowance",
    "text_of",
]

FINISH_REASONS = {"stop": "stop", "length": "length"}
MAX_COUNT = (1 << 31) - 1  # token counts above this are not believed
TEMPLATE_TOKENS, TEMPLATE_TOKENS_PER_MESSAGE = 16, 8


def text_of(value: object) -> str:
    """A delta's text: a string of Unicode scalar values (a lone surrogate could not be sealed)."""
    if not isinstance(value, str) or not is_scalar_text(value):
        raise UpstreamProtocolError("malformed text")
    return value


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
    """A token count from the node, or 0 when it is missing or not believable."""
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT else 0


def template_allowance(messages: int) -> int:
    """Tokens a chat template may add around the messages (ChatML adds 5 per message)."""
    return TEMPLATE_TOKENS + TEMPLATE_TOKENS_PER_MESSAGE * messages


def contents(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"]]


class ChatDialect:
    """llama-server's OpenAI-compatible chat endpoint: it applies the model's chat template."""

    path = "/v1/chat/completions"
    body = staticmethod(completion_body)

    @staticmethod
    def prompt_bounds(body: dict[str, Any]) -> tuple[int, int]:
        """Bounds on the prompt's tokens without a tokenizer: a token is at least one byte."""
        texts = contents(body)
        return 0, sum(len(t.encode("utf-8")) for t in texts) + template_allowance(len(texts))

    @staticmethod
    def count_text(body: dict[str, Any]) -> str:
        """What the node's tokenizer counts when the bounds cannot decide."""
        return "\n".join(contents(body))

    @staticmethod
    def counted_lower(body: dict[str, Any], tokens: int) -> int:
        """A lower bound on the prompt from the count of `count_text` (each join may have
        merged two tokens into one; the template only adds)."""
        return max(0, tokens - len(body["messages"]))

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
        choices = obj.get("choices")
        if choices is None:
            return []
        if not isinstance(choices, list):
            raise UpstreamProtocolError("malformed choices")
        out: list[Delta | Finished] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise UpstreamProtocolError("malformed choice")
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            if text:
                out.append(Delta(text_of(text)))
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self._finish_reason = FINISH_REASONS.get(reason, "stop")
        return out
