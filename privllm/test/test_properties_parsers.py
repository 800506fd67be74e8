"""Property tests of the router's parsers of peer input: each raises only its documented error.

Bounded for CI; PRIVLLM_PROPERTY_EXAMPLES=10000 runs them longer (privllm/test/properties.py)."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ..harmony.dialect import HarmonyDialect
from ..protocol.chat import BadChatRequest, parse_chat_request
from ..protocol.encoding import EncodingError, dumps, loads_bounded
from ..protocol.envelope import parse_envelope
from ..protocol.errors import RequestRejected
from ..protocol.sse import SSEError, SSEParser
from ..upstream.events import UpstreamProtocolError, UpstreamRequestError, refusal_code
from ..upstream.openai_stream import ChatCompletionStream, ChatDialect
from . import properties
from .harmony_replay import encoding
from .helpers import chat_limits, current_key, ring, sealed_request

properties.load()

# JSON values with the awkward parts: lone surrogates, huge and negative numbers, deep nesting.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=False),
    st.text(alphabet=st.characters(codec=None), max_size=20),
    st.sampled_from(["\ud800", "user", "assistant", "system", "brief", "high", "[DONE]"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(
        ["messages", "role", "content", "max_tokens", "temperature", "top_p", "verbosity", "choices", "delta",
         "finish_reason", "usage", "prompt_tokens", "error", "type", "tokens", "stop"]), inner, max_size=5),
    max_leaves=20,
)  # fmt: skip


texts = st.text(max_size=20) | st.text(alphabet=st.characters(categories=["Cs", "Co", "Cc"]), max_size=3)
messages = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]), "content": texts})
requests = st.fixed_dictionaries(
    {"messages": st.lists(messages, max_size=4)},
    optional={
        "max_tokens": st.integers(-1, 2**70) | st.booleans(),
        "temperature": st.floats() | st.integers(),
        "top_p": st.floats(),
        "verbosity": st.sampled_from(["brief", "normal", "detailed", "huge"]),
        "reasoning_effort": st.sampled_from(["low", "medium", "high", "max"]),
    },
)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes


def _no_constants(name: str) -> None:
    raise ValueError(name)


STRICT = json.JSONDecoder(parse_constant=_no_constants)  # what loads_bounded used before orjson


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 == 1.0 is not enough here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


class BoundedJson(TestCase):
    """Where orjson and the standard library differ, loads_bounded stays as strict as before."""

    def test_refused(self) -> None:
        for text in [
            b"NaN", b"[Infinity]", b"-Infinity", b"1e400", b'"\\ud800"', b'"a\\udc00b"', b'"\xed\xa0\x80"',
            b'"\xff"', b'"\x01"', b"\xef\xbb\xbf{}", b"[1,]", b"01", b"{}x", b"", b"[" * 40 + b"]" * 40,
        ]:  # fmt: skip
            self.assertRaises(EncodingError, loads_bounded, text, 1 << 16)
            self.assertRaises(EncodingError, loads_bounded, text.decode("utf-8", "surrogateescape"), 1 << 16)

    def test_integers_stay_exact(self) -> None:
        for number in [2**63, 2**64, -(2**63) - 1, 10**40, -(10**400)]:
            value = loads_bounded(b'{"n":%d}' % number, 1 << 16)
            self.assertTrue(same(value, {"n": number}), number)
        self.assertTrue(same(loads_bounded(b"[1e19, 1.5, -0]", 100), [1e19, 1.5, 0]))

    def test_last_duplicate_name_wins(self) -> None:
        self.assertEqual(loads_bounded(b'{"a":1,"a":2}', 100), {"a": 2})

    def test_size_before_parsing(self) -> None:
        self.assertRaises(EncodingError, loads_bounded, b"[" * 100, 99)


class Plaintext(TestCase):
    @given(requests | json_values)
    def test_chat_request_and_upstream_body(self, value: Any) -> None:
        """A chat request either parses into a body every UTF-8 encoder can write, or is a BadChatRequest."""
        try:
            chat = parse_chat_request(json_bytes(value), chat_limits())
        except BadChatRequest:
            return
        body = ChatDialect.body(chat)
        dumps(body).decode("utf-8")
        lower, upper = ChatDialect.prompt_bounds(body)
        self.assertLessEqual(lower, upper)

    @given(st.lists(st.sampled_from(["user", "assistant", "system"]), min_size=1, max_size=4), st.text(max_size=30))
    def test_valid_requests_render_for_harmony(self, roles: list[str], text: str) -> None:
        messages = [{"role": r, "content": text} for r in roles[:-1]] + [{"role": "user", "content": text}]
        try:
            chat = parse_chat_request(json_bytes({"messages": messages}), chat_limits())
        except BadChatRequest:
            self.assertTrue(any(0xD800 <= ord(c) <= 0xDFFF for c in text))
            return
        body = harmony().body(chat)
        self.assertEqual(harmony().prompt_bounds(body)[0], len(body["prompt"]))

    @given(st.binary(max_size=300) | json_values.map(json_bytes))
    def test_bounded_json(self, data: bytes) -> None:
        """orjson reads most text: whatever it takes, the standard library's strict decoder
        reads to the same value, types included (so it accepts nothing new)."""
        try:
            value = loads_bounded(data, 1 << 16)
        except EncodingError:
            return
        self.assertTrue(same(value, STRICT.decode(data.decode("utf-8"))), data)

    @given(json_values)
    def test_bounded_json_round_trip(self, value: Any) -> None:
        """Any JSON value comes back exactly, integers as integers at any size."""
        data = json_bytes(value)
        try:
            json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except ValueError:  # a lone surrogate or an infinity: not JSON text (test_bounded_json covers these)
            return
        self.assertTrue(same(loads_bounded(data, 1 << 16), value), data)


class Envelope(TestCase):
    @given(json_values, st.sampled_from(["v", "key_id", "timestamp", "request_id", "aad", "pow", "ciphertext"]))
    def test_any_field_replaced(self, value: Any, name: str) -> None:
        body = dict(ENVELOPE)
        body[name] = value
        try:
            parse_envelope(json_bytes(body), max_ciphertext=4096)
        except RequestRejected:
            pass

    @given(st.binary(max_size=400))
    def test_any_bytes(self, data: bytes) -> None:
        try:
            parse_envelope(data, max_ciphertext=4096)
        except RequestRejected:
            pass


class ServerSentEvents(TestCase):
    @given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
    def test_any_split_gives_the_same_events(self, data: bytes, cuts: list[int]) -> None:
        whole = SSEParser(max_line=256, max_event=512)
        try:
            expected = whole.feed(data)
        except SSEError:
            return
        pieces = SSEParser(max_line=256, max_event=512)
        got = []
        try:
            for piece in split(data, cuts):
                got += pieces.feed(piece)
        except SSEError:
            return  # a piece may pass a bound that the whole input passes only later
        self.assertEqual(got, expected)


class Translators(TestCase):
    @given(st.lists(json_values | st.sampled_from([b"[DONE]", b"{", b"x"]), max_size=6), st.lists(st.integers(0, 999)))
    def test_chat_stream(self, events: list[Any], cuts: list[int]) -> None:
        """Any JSON event, or raw data (bytes), split anywhere."""
        data = b"".join(b"data: " + (e if isinstance(e, bytes) else json_bytes(e)) + b"\n\n" for e in events)
        stream = ChatCompletionStream()
        try:
            for piece in split(data, cuts):
                for out in stream.feed(piece):
                    dumps(out._asdict()).decode("utf-8")
            stream.end()
        except (UpstreamProtocolError, UpstreamRequestError):
            pass

    @given(st.lists(json_values | st.fixed_dictionaries({"tokens": st.lists(st.integers(-5, 2**40))}), max_size=5))
    def test_harmony_stream(self, events: list[Any]) -> None:
        stream = harmony().translator({"prompt": [1, 2, 3]})
        try:
            for e in events:
                stream.feed(b"data: " + json_bytes(e) + b"\n\n")
            stream.end()
        except (UpstreamProtocolError, UpstreamRequestError):
            pass

    @given(st.integers(100, 599), st.binary(max_size=200) | json_values.map(json_bytes))
    def test_refusals(self, status: int, body: bytes) -> None:
        self.assertIn(refusal_code(status, body), (None, "too_long", "bad_request"))


ENVELOPE = sealed_request(current_key(ring())).body


@functools.cache
def harmony() -> HarmonyDialect:
    """Made once, in trial's working directory (the vocabulary is unpacked there)."""
    return HarmonyDialect(encoding(os.path.abspath("harmony")), "low", Clock(), lambda: None)
