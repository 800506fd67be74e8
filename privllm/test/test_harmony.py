"""Harmony mode: rendering, and final-only streaming of a replayed gpt-oss turn."""

from __future__ import annotations

import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ..harmony import vocabulary
from ..harmony.dialect import HarmonyDialect, HarmonyStream, render
from ..protocol.chat import parse_chat_request
from ..protocol.life import Finished
from ..upstream.events import Delta
from ..upstream.instructions import INSTRUCTIONS
from .harmony_replay import FINAL, assistant_tokens, completion_events, encoding
from .helpers import chat_limits


def chat(obj: dict) -> object:
    return parse_chat_request(json.dumps(obj).encode(), chat_limits())


class Rendering(TestCase):
    def test_multi_turn(self) -> None:
        enc = encoding(os.path.abspath(self.mktemp()))
        request = chat(
            {
                "messages": [
                    {"role": "system", "content": "The user is in Lyon."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Café?"},
                ],
                "verbosity": "brief",
                "reasoning_effort": "low",
            }
        )
        text = enc.decode_utf8(render(enc, request, "medium", 1_800_000_000))  # type: ignore[arg-type]
        expected = (
            "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
            "Knowledge cutoff: 2024-06\nCurrent date: 2027-01-15\n\nReasoning: low\n\n"
            "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
            "<|start|>developer<|message|># Instructions\n\n"
            + INSTRUCTIONS["brief"]
            + "\n\nThe user is in Lyon.<|end|>"
            "<|start|>user<|message|>Hi<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Hello!<|end|>"
            "<|start|>user<|message|>Café?<|end|><|start|>assistant"
        )
        self.assertEqual(text, expected)

    def test_vocabulary_is_checked(self) -> None:
        directory = os.path.abspath(self.mktemp())
        vocabulary.install(directory)
        with open(os.path.join(directory, vocabulary.FILE), "ab") as f:
            f.write(b"tampered")
        self.assertRaises(vocabulary.VocabularyError, vocabulary.install, directory)


class Streaming(TestCase):
    def setUp(self) -> None:
        self.enc = encoding(os.path.abspath(self.mktemp()))
        self.tool_calls = 0

    def run_stream(self, tokens: list[int]) -> list[object]:
        def tool() -> None:
            self.tool_calls += 1

        stream = HarmonyStream(self.enc, 40, tool)
        out: list[object] = []
        for event in completion_events(tokens, 40):
            for cut in range(0, len(event), 11):  # and the bytes of each event arrive in pieces
                out += stream.feed(event[cut : cut + 11])
        return out + stream.end()

    def test_final_only(self) -> None:
        out = self.run_stream(assistant_tokens(self.enc))
        deltas = [e.text for e in out if isinstance(e, Delta)]
        self.assertEqual("".join(deltas), FINAL)
        self.assertGreater(len(deltas), 5, "streamed token by token")
        self.assertNotIn("SECRET-ANALYSIS", "".join(deltas))
        finished = out[-1]
        assert isinstance(finished, Finished)
        self.assertEqual(finished.finish_reason, "stop")
        self.assertEqual(finished.prompt_tokens, 40)
        self.assertEqual(self.tool_calls, 0)

    def test_commentary_ends_the_answer(self) -> None:
        out = self.run_stream(assistant_tokens(self.enc, final="calling a tool", channel="commentary"))
        self.assertEqual([e for e in out if isinstance(e, Delta)], [])
        self.assertEqual(self.tool_calls, 1)
        self.assertIsInstance(out[-1], Finished)

    def test_length_limit(self) -> None:
        tokens = assistant_tokens(self.enc)[:-1]  # cut before <|return|>: n_predict reached
        stream = HarmonyStream(self.enc, 40, lambda: None)
        events = completion_events(tokens, 40)
        events[-1] = events[-1].replace(b'"stop_type": "eos"', b'"stop_type": "limit"')
        out = [e for ev in events for e in stream.feed(ev)]
        finished = out[-1]
        assert isinstance(finished, Finished)
        self.assertEqual(finished.finish_reason, "length")

    def test_dialect_body(self) -> None:
        dialect = HarmonyDialect(self.enc, "high", Clock(), lambda: None)
        body = dialect.body(chat({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 33}))  # type: ignore[arg-type]
        self.assertEqual((body["stream"], body["return_tokens"], body["n_predict"]), (True, True, 33))
        self.assertIn("Reasoning: high", self.enc.decode_utf8(body["prompt"]))
        self.assertEqual(dialect.path, "/completion")
        self.assertEqual(sorted(body["stop"]), ["<|call|>", "<|return|>"])
