"""
The Harmony backend mode, sans-IO: render the conversation for gpt-oss, and turn the token
ids llama-server streams from `/completion` into deltas of the `final` channel only.

The system message carries the reasoning effort and the date, the developer message the
verbosity instruction and the app's own system text; earlier assistant turns are rendered
as `final` messages (earlier analysis is not kept, as the Harmony guide prescribes). The
`analysis` channel is dropped, never logged, never sent. No tools are offered, so a
`commentary` message or a tool call ends the answer (finish reason `stop`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from openai_harmony import (
    Conversation,
    DeveloperContent,
    HarmonyError,
    Message,
    ReasoningEffort,
    Role,
    StreamableParser,
    SystemContent,
)
from twisted.internet.interfaces import IReactorTime

from ..protocol.chat import REASONING_EFFORT, ChatRequest
from ..protocol.life import Finished
from ..protocol.sse import SSEParser
from ..upstream.events import Delta, UpstreamProtocolError, event_object, sse_events
from ..upstream.instructions import INSTRUCTIONS

__all__ = ["EFFORT", "MAX_TOKEN_ID", "ROLES", "HarmonyDialect", "HarmonyStream", "render"]

MAX_TOKEN_ID = (1 << 32) - 1  # the tokenizer takes u32 ids: a larger one overflows in the binding
EFFORT = {name: ReasoningEffort[name.upper()] for name in REASONING_EFFORT}  # a new wire value fails at import
ROLES = {"user": Role.USER, "assistant": Role.ASSISTANT}


def render(encoding: Any, chat: ChatRequest, default_effort: str, now: float) -> list[int]:
    effort = EFFORT[chat.reasoning_effort or default_effort]
    date = time.strftime("%Y-%m-%d", time.gmtime(now))
    system = SystemContent.new().with_reasoning_effort(effort).with_conversation_start_date(date)
    app_system = [m.content for m in chat.messages if m.role == "system"]
    developer = DeveloperContent.new().with_instructions("\n\n".join([INSTRUCTIONS[chat.verbosity], *app_system]))
    messages = [
        Message.from_role_and_content(Role.SYSTEM, system),
        Message.from_role_and_content(Role.DEVELOPER, developer),
    ]
    for m in chat.messages:
        if m.role == "system":
            continue
        message = Message.from_role_and_content(ROLES[m.role], m.content)
        messages.append(message.with_channel("final") if m.role == "assistant" else message)
    return list(encoding.render_conversation_for_completion(Conversation.from_messages(messages), Role.ASSISTANT))


class HarmonyStream:
    def __init__(self, encoding: Any, prompt_tokens: int, on_tool_call: Callable[[], None]) -> None:
        self._encoding = encoding
        self._parser = StreamableParser(encoding, Role.ASSISTANT)
        self._stops = set(encoding.stop_tokens_for_assistant_actions())  # <|return|>, <|call|>
        self._calls = {t for t in self._stops if encoding.decode_utf8([t]) == "<|call|>"}
        self._sse = SSEParser()
        self._prompt_tokens = prompt_tokens
        self._completion_tokens = 0
        self._on_tool_call = on_tool_call
        self.finished = False
        self.upstream_complete = False  # llama-server said stop: the response ends, its connection is reusable

    def _finish(self, reason: str) -> list[Delta | Finished]:
        self.finished = True
        return [Finished(reason, self._prompt_tokens, self._completion_tokens)]

    def _token(self, token: int) -> list[Delta | Finished]:
        self._completion_tokens += 1
        if token in self._stops:
            if token in self._calls:
                self._on_tool_call()
            return self._finish("stop")
        try:
            self._parser.process(token)
        except (HarmonyError, OverflowError, ValueError) as e:
            raise UpstreamProtocolError("malformed Harmony tokens") from e
        parser = self._parser
        if parser.current_channel == "commentary" or parser.current_recipient is not None:
            self._on_tool_call()
            return self._finish("stop")
        if parser.current_channel == "final" and parser.last_content_delta:
            return [Delta(parser.last_content_delta)]
        return []

    def feed(self, data: bytes) -> list[Delta | Finished]:
        out: list[Delta | Finished] = []
        for event in sse_events(self._sse, data):
            if self.finished:
                break
            obj = event_object(event)
            tokens = obj.get("tokens") or []
            if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_TOKEN_ID for t in tokens
            ):
                raise UpstreamProtocolError("malformed tokens")
            for token in tokens:
                out += self._token(token)
                if self.finished:
                    return out
            if obj.get("stop") is True:
                self.upstream_complete = True
                out += self._finish("length" if obj.get("stop_type") == "limit" else "stop")
        return out

    def end(self) -> list[Delta | Finished]:
        if self.finished:
            return []
        raise UpstreamProtocolError("upstream stream ended before the answer did")


class HarmonyDialect:
    path = "/completion"

    def __init__(
        self, encoding: Any, default_effort: str, clock: IReactorTime, on_tool_call: Callable[[], None]
    ) -> None:
        self._encoding = encoding
        self._default_effort = default_effort
        self._clock = clock
        self._on_tool_call = on_tool_call
        self._stops = [encoding.decode_utf8([t]) for t in encoding.stop_tokens_for_assistant_actions()]

    def body(self, chat: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": render(self._encoding, chat, self._default_effort, self._clock.seconds()),
            "stream": True,
            "return_tokens": True,
            "n_predict": chat.max_tokens,
            "stop": self._stops,  # <|return|>, <|call|>; the parser stops on them too
            "cache_prompt": True,
        }
        if chat.temperature is not None:
            body["temperature"] = chat.temperature
        if chat.top_p is not None:
            body["top_p"] = chat.top_p
        return body

    @staticmethod
    def prompt_bounds(body: dict[str, Any]) -> tuple[int, int]:
        """The prompt is rendered to token ids here: its length is exact, nothing to count."""
        return len(body["prompt"]), len(body["prompt"])

    def count_text(self, body: dict[str, Any]) -> str:
        """The rendered prompt as text. The bounds are exact, so a chat never asks to count it."""
        return str(self._encoding.decode_utf8(body["prompt"]))

    @staticmethod
    def counted_lower(body: dict[str, Any], tokens: int) -> int:
        """The exact length: what the node's tokenizer says adds nothing."""
        return len(body["prompt"])

    def translator(self, body: dict[str, Any]) -> HarmonyStream:
        return HarmonyStream(self._encoding, len(body["prompt"]), self._on_tool_call)
