"""Properties of the parsers this side owns: key set verification, the client's stream reader,
the config loader. Each holds for any input: a documented result or the documented error."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ..config import ConfigError, load_config
from ..protocol.encoding import b64encode, dumps
from ..protocol.keyset import KeySetError, keyset_document, verify_keyset
from ..protocol.request import SealedRequest
from ..protocol.response import ResponseReader
from ..protocol.sse import encode_event
from ..protocol.stream import StreamError, StreamSealer, derive_stream_keys
from .helpers import NOW, ring
from .properties import load

load()

IDENTITY = Ed25519PrivateKey.generate()
PIN = IDENTITY.public_key().public_bytes_raw()
KEYSET = dumps(keyset_document(ring().published(NOW), NOW, NOW + 3600, IDENTITY))
VERIFIED = verify_keyset(KEYSET, PIN, NOW)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def mutated_bytes(data: bytes) -> st.SearchStrategy[bytes]:
    """Bytes replaced, inserted or deleted at random places."""

    @st.composite
    def build(draw: Any) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(out)))
            action = draw(st.sampled_from(["replace", "insert", "delete"]))
            piece = draw(st.binary(min_size=1, max_size=4))
            if action == "insert" or at == len(out):
                out[at:at] = piece
            elif action == "replace":
                out[at : at + len(piece)] = piece
            else:
                del out[at : at + len(piece)]
        return bytes(out)

    return build()


def member_paths(value: Any, path: tuple = ()) -> list[tuple]:
    paths = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += member_paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            paths += member_paths(item, (*path, i))
    return paths


DOC = json.loads(KEYSET)
PATHS = [p for p in member_paths(DOC) if p]


class KeySetProperties(TestCase):
    def outcome(self, raw: bytes) -> None:
        """Either the very same set (an equivalent spelling of the signed document) or KeySetError."""
        try:
            keyset = verify_keyset(raw, PIN, NOW)
        except KeySetError:
            return
        self.assertEqual(keyset, VERIFIED)

    @given(mutated_bytes(KEYSET))
    def test_byte_mutations(self, raw: bytes) -> None:
        self.outcome(raw)

    @given(st.sampled_from(PATHS), json_values)
    def test_member_replaced(self, path: tuple, value: Any) -> None:
        doc = json.loads(KEYSET)
        target = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        self.outcome(json.dumps(doc).encode())

    @given(json_values)
    def test_any_json(self, value: Any) -> None:
        self.outcome(json.dumps(value).encode())


ENC, SECRET, NONCE = os.urandom(32), os.urandom(32), os.urandom(32)
KEYS = derive_stream_keys(SECRET, ENC, NONCE)
INIT = encode_event("init", dumps({"response_nonce": b64encode(NONCE)}).decode())
GOOD = [
    {"type": "delta", "text": "a"},
    {"type": "delta", "text": "b"},
    {"type": "done", "finish_reason": "stop", "usage": {}},
]


def sealed_stream(chunks: list[bytes]) -> bytes:
    sealer = StreamSealer(KEYS)
    events = [encode_event("chunk", sealer.seal_json(c, final=i == len(chunks) - 1)) for i, c in enumerate(chunks)]
    return INIT + b"".join(events)


class StreamReaderProperties(TestCase):
    def read(self, data: bytes, cuts: list[int]) -> list[dict[str, Any]] | None:
        """Feed `data` in pieces; the chunks read, or None when the reader refused with StreamError."""
        reader = ResponseReader(SealedRequest({}, ENC, SECRET))
        chunks: list[dict[str, Any]] = []
        start = 0
        try:
            for end in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
                chunks += reader.feed(data[start:end])
                start = max(start, end)
            reader.end()
        except StreamError:
            return None
        return chunks

    @given(st.lists(st.integers(0, 10_000), max_size=8))
    def test_any_split_reads_the_same(self, cuts: list[int]) -> None:
        self.assertEqual(self.read(sealed_stream([dumps(c) for c in GOOD]), cuts), GOOD)

    @given(st.binary(max_size=300), st.lists(st.integers(0, 1000), max_size=4))
    def test_garbage(self, data: bytes, cuts: list[int]) -> None:
        self.read(data, cuts)  # StreamError or chunks, nothing else
        self.read(INIT + data, cuts)

    @given(st.lists(json_values, min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=4))
    def test_any_sealed_plaintext(self, values: list[Any], cuts: list[int]) -> None:
        """Whatever the sealed plaintexts hold, what comes out has the documented shape."""
        chunks = self.read(sealed_stream([json.dumps(v).encode() for v in values]), cuts)
        for chunk in chunks or []:
            self.assertIn(chunk["type"], ("delta", "done", "error"))
            if chunk["type"] == "delta":
                self.assertIsInstance(chunk["text"], str)

    @given(mutated_bytes(sealed_stream([dumps(c) for c in GOOD])))
    def test_mutated_stream(self, data: bytes) -> None:
        chunks = self.read(data, [])
        if chunks is not None:  # only a change outside the sealed data (an SSE comment, a field name) passes
            self.assertEqual(chunks, GOOD)


toml_pieces = st.sampled_from(
    ["[server]", "[pow]", "[keys]", "[", "]", "{", "}", "port", "max_difficulty", "keyset_lifetime", "a.b.c",
     " = ", "=", "1", "24", "25", "-1", "1e400", "nan", "inf", "9" * 30, '"x"', "'y'", '"""', "true", "[1, 2]",
     "\n", "\n", ".", ",", "#", "\\", "\x00", "\ud7ff", "é"]
)  # fmt: skip


class ConfigProperties(TestCase):
    @given(st.lists(toml_pieces, max_size=30).map("".join), st.dictionaries(
        st.sampled_from(["PRIVLLM_SERVER__PORT", "PRIVLLM_POW__MAX_DIFFICULTY", "PRIVLLM_X__Y"]),
        st.lists(toml_pieces, max_size=8).map("".join), max_size=2,
    ))  # fmt: skip
    def test_loads_or_says_why_in_one_line(self, text: str, environ: dict[str, str]) -> None:
        fd, path = tempfile.mkstemp(suffix=".toml")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(text)
            config = load_config("dev", path, environ=environ)
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
            return
        finally:
            os.unlink(path)
        self.assertLessEqual(config.pow.max_difficulty, 24)
