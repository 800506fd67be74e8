"""Property tests of the Oblivious HTTP core: each parser, fed any bytes in any split, raises
only OhttpError; what the encoders and sealers write, the parsers and openers read back.

Bounded for CI; PRIVLLM_PROPERTY_EXAMPLES=10000 runs them longer (privllm/test/properties.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ..protocol.ohttp import bhttp
from ..protocol.ohttp.bhttp_stream import End, Head, ResponseDecoder, ResponseEncoder, StreamLimits
from ..protocol.ohttp.chunked import ChunkedRequestOpener, ChunkedRequestSealer
from ..protocol.ohttp.errors import OhttpError
from ..protocol.ohttp.keyconfig import parse_key_config, parse_key_configs
from ..protocol.ohttp.message import decapsulate_request, decapsulate_response, encapsulate_request
from ..protocol.stream import StreamError
from ..protocol.v2.request import open_chat_request, seal_chat_request
from ..protocol.v2.response import ResponseReader, ResponseStream
from . import properties
from .test_device_proof import DEVICE
from .test_ohttp import (
    A_CONFIG,
    A_ENC_REQUEST,
    A_ENC_RESPONSE,
    A_REQUEST,
    A_SKE,
    A_SKR,
    AES128,
    B_REQUEST,
    B_RESPONSE,
    C_CONFIG,
    C_HEADER,
    C_REQUEST_CHUNKS,
    C_SKR,
    Pair,
    gateway,
    key_pair,
)
from .test_v2 import CHAT, DELTA, DONE, DONE_LINE, END, HEAD, T, chunk, exchange, raw_answer
from .test_v2 import CONFIG as V2_CONFIG
from .test_v2 import KEYS as V2_KEYS

properties.load()

V2_SEALED = seal_chat_request(V2_CONFIG, DEVICE, CHAT, T)
V2_STREAM = ResponseStream(open_chat_request(V2_KEYS, V2_SEALED.body).context, 16)
DELTA_CHUNK = chunk(DELTA)
DONE_CHUNK = chunk(DONE_LINE) + END
V2_ANSWER = V2_STREAM.start() + V2_STREAM.event({"type": "delta", "text": "a"}) + V2_STREAM.final(DONE)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """A published vector with a few bytes changed, cut short or extended: near-valid input."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
    return bytes(data) + draw(st.binary(max_size=8))


def inputs(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=200) | mutated(seed)


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    return st.lists(st.integers(0, len(data)), max_size=8).map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True)]
    )


names = st.binary(min_size=1, max_size=8).map(lambda b: bytes(97 + x % 26 for x in b))
values = st.binary(max_size=12).map(lambda b: bytes(33 + x % 94 for x in b))
fields = st.lists(st.tuples(names, values), max_size=4).map(tuple)
requests = st.builds(
    bhttp.Request,
    method=st.sampled_from([b"GET", b"POST"]),
    scheme=st.just(b"https"),
    authority=st.sampled_from([b"", b"example.com"]),
    path=st.sampled_from([b"/", b"/api/chat"]),
    headers=fields,
    content=st.binary(max_size=40),
    trailers=fields,
)
responses = st.builds(
    bhttp.Response,
    status=st.integers(200, 599),
    headers=fields,
    content=st.binary(max_size=40),
    trailers=fields,
    informational=st.lists(st.builds(bhttp.Informational, st.integers(100, 199), fields), max_size=2).map(tuple),
)


class Parsers(TestCase):
    @given(inputs(A_CONFIG))
    def test_key_config(self, data: bytes) -> None:
        for parse in (parse_key_config, parse_key_configs):
            try:
                parse(data)
            except OhttpError:
                pass

    @given(inputs(B_REQUEST), inputs(B_RESPONSE))
    def test_bhttp(self, request: bytes, response: bytes) -> None:
        for decode, data in ((bhttp.decode_request, request), (bhttp.decode_response, response)):
            try:
                decode(data)
            except OhttpError:
                pass

    @given(inputs(A_ENC_REQUEST), inputs(A_ENC_RESPONSE))
    def test_whole_messages(self, request: bytes, response: bytes) -> None:
        try:
            self.assertEqual(decapsulate_request(gateway(A_CONFIG, A_SKR), request)[0], A_REQUEST)
        except OhttpError:
            pass
        _, context = encapsulate_request(parse_key_config(A_CONFIG), AES128, A_REQUEST, key_pair(A_SKE))
        try:
            decapsulate_response(context, response)
        except OhttpError:
            pass

    @given(st.data())
    def test_chunked_request_reader(self, data: st.DataObject) -> None:
        wire = data.draw(inputs(C_HEADER + b"".join(C_REQUEST_CHUNKS)))
        opener = ChunkedRequestOpener(gateway(C_CONFIG, C_SKR))
        try:
            for part in data.draw(splits(wire)):
                opener.feed(part)
            opener.end()
        except OhttpError:
            pass

    @given(st.data())
    def test_chunked_response_reader(self, data: st.DataObject) -> None:
        pair = Pair()
        wire = data.draw(inputs(pair.stream([b"one", b"two"])))
        try:
            for part in data.draw(splits(wire)):
                pair.opener.feed(part)
            pair.opener.end()
        except OhttpError:
            pass

    @given(st.data())
    def test_streamed_bhttp_reader(self, data: st.DataObject) -> None:
        encoder = ResponseEncoder()
        seed = encoder.head(200, ((b"content-type", b"x"),)) + encoder.content(b"abc") + encoder.end(((b"t", b"v"),))
        wire = data.draw(inputs(seed))
        decoder = ResponseDecoder(StreamLimits(max_fields=3, max_section=64, max_chunk=16))
        try:
            for part in data.draw(splits(wire)):
                decoder.feed(part)
            decoder.end()
        except OhttpError:
            pass

    @given(st.data())
    def test_v2_request(self, data: st.DataObject) -> None:
        """Any refusal is an OhttpError with one of the four wire codes."""
        body = data.draw(inputs(V2_SEALED.body))
        try:
            open_chat_request(V2_KEYS, body)
        except OhttpError as e:
            self.assertIn(e.code, ("malformed", "too_large", "unknown_key", "decrypt_failed"))

    @given(st.data())
    def test_v2_answer_reader(self, data: st.DataObject) -> None:
        wire = data.draw(inputs(V2_ANSWER))
        reader = ResponseReader(V2_SEALED.context)
        try:
            for part in data.draw(splits(wire)):
                reader.feed(part)
            reader.end()
        except StreamError:
            pass

    @given(st.lists(inputs(DELTA_CHUNK).filter(bool), max_size=3), inputs(DONE_CHUNK))
    def test_v2_answer_plaintexts(self, chunks: list[bytes], final: bytes) -> None:
        """Sealed properly, near-valid plaintexts still raise only StreamError."""
        sealed, opened = exchange()
        reader = ResponseReader(sealed.context)
        try:
            reader.feed(raw_answer(opened.context, [HEAD, *chunks], final))
            reader.end()
        except StreamError:
            pass


class RoundTrips(TestCase):
    @given(requests, responses, st.booleans())
    def test_bhttp(self, request: bhttp.Request, response: bhttp.Response, truncate: bool) -> None:
        self.assertEqual(bhttp.decode_request(bhttp.encode_request(request, truncate)), request)
        self.assertEqual(bhttp.decode_response(bhttp.encode_response(response, truncate)), response)

    @given(st.data())
    def test_chunked_response_any_split(self, data: st.DataObject) -> None:
        chunks = data.draw(st.lists(st.binary(min_size=1, max_size=50), max_size=5))
        final = data.draw(st.binary(max_size=50))
        pair = Pair()
        wire = pair.stream([*chunks, final])
        opened = [c for part in data.draw(splits(wire)) for c in pair.opener.feed(part)]
        self.assertEqual([*opened, pair.opener.end()], [*chunks, final])

    @given(st.data())
    def test_chunked_request_any_split(self, data: st.DataObject) -> None:
        chunks = data.draw(st.lists(st.binary(min_size=1, max_size=50), max_size=5))
        sealer = ChunkedRequestSealer(parse_key_config(C_CONFIG), AES128)
        wire = b"".join(sealer.seal(c) for c in chunks) + sealer.seal(b"end", final=True)
        opener = ChunkedRequestOpener(gateway(C_CONFIG, C_SKR))
        opened = [c for part in data.draw(splits(wire)) for c in opener.feed(part)]
        self.assertEqual([*opened, opener.end()], [*chunks, b"end"])

    @given(st.data(), st.integers(200, 599), fields, st.lists(st.binary(min_size=1, max_size=40), max_size=4), fields)
    def test_streamed_bhttp(
        self,
        data: st.DataObject,
        status: int,
        headers: tuple[bhttp.Field, ...],
        chunks: list[bytes],
        trailers: tuple[bhttp.Field, ...],
    ) -> None:
        encoder = ResponseEncoder()
        wire = encoder.head(status, headers) + b"".join(map(encoder.content, chunks)) + encoder.end(trailers)
        decoder = ResponseDecoder()
        parts = [p for piece in data.draw(splits(wire)) for p in decoder.feed(piece)] + decoder.end()
        self.assertEqual(parts[0], Head(status, headers))
        self.assertEqual(parts[-1], End(trailers))
        self.assertEqual(b"".join(p for p in parts[1:-1] if isinstance(p, bytes)), b"".join(chunks))
        self.assertEqual(len(parts), 2 + sum(isinstance(p, bytes) for p in parts))
