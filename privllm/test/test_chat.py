"""Validation of the decrypted chat request, and the translation of llama-server's stream."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from ..protocol.chat import BadChatRequest, parse_chat_request
from ..protocol.life import Finished
from ..upstream.events import Delta, UpstreamProtocolError
from ..upstream.instructions import INSTRUCTIONS
from ..upstream.openai_stream import ChatCompletionStream, completion_body
from .helpers import chat_limits

LIMITS = chat_limits(max_messages=4, max_message_chars=100, max_total_chars=150, max_tokens=500, brief_max_tokens=50)
USER = {"role": "user", "content": "hello"}


def parse(obj: Any) -> Any:
    return parse_chat_request(json.dumps(obj).encode(), LIMITS)


class ChatValidation(TestCase):
    def field(self, obj: Any) -> str:
        with self.assertRaises(BadChatRequest) as cm:
            parse(obj)
        self.assertNotIn("secret-value", str(cm.exception))
        return cm.exception.field

    def test_valid_and_defaults(self) -> None:
        chat = parse({"messages": [{"role": "system", "content": "be brief"}, USER]})
        self.assertEqual((chat.max_tokens, chat.verbosity), (50, "brief"))
        self.assertEqual([m.role for m in chat.messages], ["system", "user"])
        self.assertEqual(parse({"messages": [USER], "verbosity": "detailed"}).max_tokens, 500)  # 800, capped
        self.assertEqual(parse({"messages": [USER], "verbosity": "normal"}).max_tokens, 300)
        self.assertEqual(parse({"messages": [USER], "verbosity": "normal", "max_tokens": 20}).max_tokens, 20)

    def test_max_tokens_capped(self) -> None:
        self.assertEqual(parse({"messages": [USER], "max_tokens": 10_000}).max_tokens, 500)
        for bad in (0, -1, True, 1.5, "5"):
            self.assertEqual(self.field({"messages": [USER], "max_tokens": bad}), "max_tokens")

    def test_ranges(self) -> None:
        self.assertEqual(parse({"messages": [USER], "temperature": 0, "top_p": 1}).temperature, 0.0)
        for t in (-0.1, 2.1, "1", True, None):
            self.assertEqual(self.field({"messages": [USER], "temperature": t}), "temperature")
        for p in (0, 1.01, -1):
            self.assertEqual(self.field({"messages": [USER], "top_p": p}), "top_p")

    def test_choices(self) -> None:
        self.assertEqual(parse({"messages": [USER], "verbosity": "brief"}).verbosity, "brief")
        self.assertEqual(self.field({"messages": [USER], "verbosity": "secret-value"}), "verbosity")
        self.assertEqual(self.field({"messages": [USER], "reasoning_effort": "max"}), "reasoning_effort")

    def test_messages(self) -> None:
        self.assertEqual(self.field({"messages": []}), "messages")
        self.assertEqual(self.field({"messages": [USER] * 5}), "messages")
        self.assertEqual(self.field({"messages": [{"role": "tool", "content": "x"}]}), "messages.role")
        self.assertEqual(self.field({"messages": [{"role": "user", "content": "x" * 101}]}), "messages.content")
        self.assertEqual(self.field({"messages": [{"role": "user", "content": "x" * 90}] * 2}), "messages")
        self.assertEqual(self.field({"messages": [{"role": "user", "content": "x", "name": "a"}]}), "messages")
        self.assertEqual(self.field({"messages": [{"role": "assistant", "content": "x"}]}), "messages.role")
        self.assertEqual(self.field({"messages": [USER], "secret-value": 1}), "body")
        self.assertEqual(self.field([USER]), "body")


# A stream as llama-server sends it (recorded shape), with metadata that must not cross over.
def _chunk(content: str | None, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    obj: dict[str, Any] = {
        "id": "chatcmpl-secret",
        "model": "/models/secret.gguf",
        "system_fingerprint": "b1-abc",
        "choices": [{"index": 0, "delta": {} if content is None else {"content": content}, "finish_reason": finish}],
    }
    if usage:
        obj["usage"] = usage
        obj["choices"] = []
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


UPSTREAM = (
    _chunk(None)
    + _chunk("Bill")
    + _chunk(" Clin")
    + _chunk("ton é🌍")
    + _chunk(None, "stop")
    + _chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 3})
    + b"data: [DONE]\n\n"
)


class UpstreamTranslation(TestCase):
    def run_stream(self, parts: list[bytes]) -> list[Any]:
        t = ChatCompletionStream()
        out: list[Any] = []
        for p in parts:
            out += t.feed(p)
        return out + t.end()

    def test_translation(self) -> None:
        out = self.run_stream([UPSTREAM])
        self.assertEqual(out, [Delta("Bill"), Delta(" Clin"), Delta("ton é🌍"), Finished("stop", 12, 3)])

    def test_every_split_point(self) -> None:
        expected = self.run_stream([UPSTREAM])
        for i in range(len(UPSTREAM) + 1):
            self.assertEqual(self.run_stream([UPSTREAM[:i], UPSTREAM[i:]]), expected)

    def test_length_and_unknown_reasons(self) -> None:
        self.assertEqual(self.run_stream([_chunk("a", "length"), b"data: [DONE]\n\n"])[-1].finish_reason, "length")
        self.assertEqual(self.run_stream([_chunk("a", "tool_calls")])[-1].finish_reason, "stop")

    def test_cut_short(self) -> None:
        t = ChatCompletionStream()
        t.feed(_chunk("a"))
        self.assertRaises(UpstreamProtocolError, t.end)

    def test_error_event(self) -> None:
        self.assertRaises(UpstreamProtocolError, ChatCompletionStream().feed, b'data: {"error":{"code":500}}\n\n')
        self.assertRaises(UpstreamProtocolError, ChatCompletionStream().feed, b"data: {nope\n\n")

    def test_completion_body(self) -> None:
        chat = parse({"messages": [USER], "temperature": 0.5})
        body = completion_body(chat)
        self.assertEqual(body["messages"][1:], [USER])
        self.assertEqual(body["messages"][0], {"role": "system", "content": INSTRUCTIONS["brief"]})
        merged = completion_body(
            parse({"messages": [{"role": "system", "content": "Be kind."}, USER], "verbosity": "detailed"})
        )
        self.assertEqual(merged["messages"][0]["content"], INSTRUCTIONS["detailed"] + "\n\nBe kind.")
        self.assertEqual(len(merged["messages"]), 2)
        self.assertTrue(body["stream"])
        self.assertEqual(body["max_tokens"], 50)
        self.assertEqual(body["temperature"], 0.5)
        self.assertNotIn("top_p", body)
