"""
Protocol v2 (privllm/protocol/v2): hostile requests and answers first, then round trips over
any split, then both directions checked with equipment that shares nothing with
privllm.protocol (rfc9180.py, `cryptography`, hmac, json, and Binary HTTP read by hand).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.trial.unittest import TestCase

from ..protocol.chat import BadChatRequest, parse_chat_request
from ..protocol.device import device_proof
from ..protocol.encoding import b64encode
from ..protocol.ohttp import bhttp
from ..protocol.ohttp.bhttp_stream import BinaryHttpStateError, ResponseEncoder
from ..protocol.ohttp.chunked import MAX_CHUNK, ChunkedResponseSealer, ChunkStateError
from ..protocol.ohttp.errors import OhttpError
from ..protocol.ohttp.keyconfig import KeyConfig
from ..protocol.ohttp.message import REQUEST_LABEL, Context, GatewayKey, Header, sender_context
from ..protocol.ohttp.suites import KEM_X25519, SymmetricSuite
from ..protocol.stream import StreamError
from ..protocol.v2.request import OpenedV2, SealedV2, open_chat_request, peek, seal_chat_request
from ..protocol.v2.response import EVENTS_TYPE, ResponseReader, ResponseStream, http_date, parse_http_date
from . import rfc9180
from .helpers import chat_limits
from .test_device_proof import DEVICE, DEVICE_PUBLIC, SMALL_ORDER, independent_proof
from .test_ohttp import AES128, CHACHA, key_pair

ROUTER_PRIVATE = bytes(range(32, 64))  # test_device_proof's router, so its independent_proof applies
ROUTER_PUBLIC = X25519PrivateKey.from_private_bytes(ROUTER_PRIVATE).public_key().public_bytes_raw()
CONFIG = KeyConfig(7, KEM_X25519, ROUTER_PUBLIC, (CHACHA, AES128))
KEYS = {7: GatewayKey(CONFIG, key_pair(ROUTER_PRIVATE).private_key)}
T = 1767229230
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi, wörld"}], "max_tokens": 20}
DONE = {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def content(enc: bytes, **changes: object) -> bytes:
    """The request's JSON for `enc`, with members changed (None drops one)."""
    obj: dict[str, object] = {
        "v": 2,
        "timestamp": T,
        "device_pubkey": b64encode(DEVICE_PUBLIC),
        "proof": b64encode(device_proof(DEVICE, ROUTER_PUBLIC, enc, T)),
        "chat": CHAT,
    }
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


def request_bytes(
    body: bytes,
    method: bytes = b"POST",
    scheme: bytes = b"https",
    path: bytes = b"/api/chat",
    headers: tuple[bhttp.Field, ...] = ((b"content-type", b"application/json"),),
    trailers: tuple[bhttp.Field, ...] = (),
) -> bytes:
    return bhttp.encode_request(bhttp.Request(method, scheme, b"privllm", path, headers, body, trailers))


def plaintext(members: Mapping[str, object] | None = None, /, **request: Any) -> Callable[[bytes], bytes]:
    """The plaintext for a request's `enc`, with JSON members (None drops one) and request parts changed."""
    return lambda enc: request_bytes(content(enc, **(members or {})), **request)


def crafted(plaintext: Callable[[bytes], bytes], suite: SymmetricSuite = CHACHA) -> bytes:
    """An encapsulated request whose plaintext is made for its own `enc`."""
    prefix, context = sender_context(CONFIG, suite, REQUEST_LABEL, None)
    return prefix + context.hpke.seal(plaintext(context.enc), b"")


class ErrorAssertions(TestCase):
    def assertRefused(self, code: str, body: bytes, max_size: int = 1 << 20) -> OhttpError:
        with self.assertRaises(OhttpError) as cm:
            open_chat_request(KEYS, body, max_size)
        self.assertEqual(cm.exception.code, code)
        return cm.exception

    def assertBroken(self, kind: str, wire: bytes, context: Context) -> None:
        """The reader refuses `wire`, fed at once then ended, with StreamError(kind)."""
        reader = ResponseReader(context)
        with self.assertRaises(StreamError) as cm:
            reader.feed(wire)
            reader.end()
        self.assertEqual(cm.exception.kind, kind)
        with self.assertRaises(StreamError):  # and it stays closed
            reader.feed(b"")


class HostileRequests(ErrorAssertions):
    def test_the_crafting_is_sound(self) -> None:
        """The hostile cases below differ from this one in the one thing each names."""
        opened = open_chat_request(KEYS, crafted(plaintext()))
        self.assertEqual(json.loads(opened.chat_plaintext), CHAT)

    def test_wrong_method_scheme_or_path(self) -> None:
        for changes in (
            {"method": b"GET"},
            {"method": b"post"},
            {"scheme": b"http"},
            {"path": b"/api/chat/"},
            {"path": b"/api/chat?x=1"},
            {"path": b"/api/pubkey"},
        ):
            self.assertRefused("malformed", crafted(plaintext(**changes)))

    def test_fields_outside_the_allow_list(self) -> None:
        for headers, trailers in (
            ((), ()),
            (((b"content-type", b"text/plain"),), ()),
            (((b"content-type", b"application/json; charset=utf-8"),), ()),
            (((b"content-type", b"application/json"),) * 2, ()),
            (((b"content-type", b"application/json"), (b"cookie", b"a")), ()),
            (((b"content-type", b"application/json"),), ((b"x", b"y"),)),
        ):
            body = crafted(plaintext(headers=headers, trailers=trailers))
            self.assertRefused("malformed", body)

    def test_missing_or_extra_members(self) -> None:
        for member in ("v", "timestamp", "device_pubkey", "proof", "chat"):
            self.assertRefused("malformed", crafted(plaintext({member: None})))
        self.assertRefused("malformed", crafted(plaintext({"request_id": "x"})))

    def test_member_types_and_ranges(self) -> None:
        for changes in (
            {"v": 1},
            {"v": "2"},
            {"v": True},
            {"v": 2.0},
            {"timestamp": -1},
            {"timestamp": 2**40 + 1},
            {"timestamp": "1767229230"},
            {"timestamp": 1767229230.5},
            {"chat": [CHAT]},
            {"chat": "hi"},
        ):
            self.assertRefused("malformed", crafted(plaintext(changes)))

    def test_bad_base64(self) -> None:
        good = b64encode(DEVICE_PUBLIC)
        for value in (good[:-1], good.replace("=", ""), good + "AA==", "-" + good[1:], 32, b64encode(bytes(31))):
            for member in ("device_pubkey", "proof"):
                body = crafted(plaintext({member: value}))
                self.assertRefused("malformed", body)
        # a last character with non-zero pad bits spells the same key a second way
        non_canonical = good[:-2] + chr(ord(good[-2]) + 1) + "="
        self.assertRefused("malformed", crafted(plaintext({"device_pubkey": non_canonical})))

    def test_not_json_or_not_binary_http(self) -> None:
        for plaintext in (
            lambda enc: request_bytes(b"{"),
            lambda enc: request_bytes(b"[]"),
            lambda enc: request_bytes(content(enc)[:-1]),
            lambda enc: request_bytes(json.dumps({**json.loads(content(enc)), "chat": {"a": [[[[]]]]}}).encode()),
            lambda enc: b"\x02" + request_bytes(content(enc))[1:],  # indeterminate length
            lambda enc: request_bytes(content(enc)) + b"\x00\x01",  # a non-zero byte after the message
            lambda enc: b"",
        ):
            self.assertRefused("malformed", crafted(plaintext))

    def test_a_proof_for_another_enc(self) -> None:
        """A proof lifted from another request of the same device does not open this one."""
        other = seal_chat_request(CONFIG, DEVICE, CHAT, T)
        stolen = device_proof(DEVICE, ROUTER_PUBLIC, other.enc, T)
        self.assertRefused("decrypt_failed", crafted(plaintext({"proof": b64encode(stolen)})))

    def test_a_proof_for_another_time_or_device(self) -> None:
        other_device = X25519PrivateKey.generate().public_key().public_bytes_raw()
        for changes in ({"timestamp": T + 1}, {"device_pubkey": b64encode(other_device)}):
            self.assertRefused("decrypt_failed", crafted(plaintext(changes)))

    def test_a_small_order_device_key(self) -> None:
        """Its shared secret is all zeros: anyone could make its proof."""
        for point in SMALL_ORDER:
            changes = {"device_pubkey": b64encode(point), "proof": b64encode(bytes(32))}
            self.assertRefused("decrypt_failed", crafted(plaintext(changes)))

    def test_unknown_key_or_suite(self) -> None:
        body = seal_chat_request(CONFIG, DEVICE, CHAT, T).body
        self.assertRefused("unknown_key", bytes([8]) + body[1:])
        self.assertEqual(peek(bytes([8]) + body[1:]).key_id, 8)  # peek needs no keys
        aes256 = Header(7, KEM_X25519, SymmetricSuite(1, 2)).encode()
        self.assertRefused("unknown_key", aes256 + body[7:])
        for header in (body[:1] + b"\x00\x21" + body[3:7], body[:3] + b"\x00\x02" + body[5:7], body[:5] + b"\x00\x09"):
            with self.assertRaises(OhttpError) as cm:
                peek(header + body[7:])
            self.assertEqual(cm.exception.code, "unknown_key")

    def test_trailing_bytes_and_tampering(self) -> None:
        body = seal_chat_request(CONFIG, DEVICE, CHAT, T).body
        self.assertRefused("decrypt_failed", body + b"\x00")
        for index in (8, 38, 39, len(body) // 2, len(body) - 1):  # enc, the ciphertext, the tag
            flipped = bytearray(body)
            flipped[index] ^= 1
            self.assertRefused("decrypt_failed", bytes(flipped))

    def test_every_truncation(self) -> None:
        body = seal_chat_request(CONFIG, DEVICE, CHAT, T).body
        for n in range(len(body)):
            with self.assertRaises(OhttpError) as cm:
                open_chat_request(KEYS, body[:n])
            self.assertIn(cm.exception.code, ("malformed", "decrypt_failed"))
        for n in range(7 + 32 + 16):
            self.assertRaises(OhttpError, peek, body[:n])

    def test_too_large_before_anything_else(self) -> None:
        body = seal_chat_request(CONFIG, DEVICE, CHAT, T).body
        self.assertRefused("too_large", body, max_size=len(body) - 1)
        self.assertRefused("too_large", bytes([8]) + body[1:], max_size=len(body) - 1)
        with self.assertRaises(OhttpError) as cm:
            peek(body, max_size=len(body) - 1)
        self.assertEqual(cm.exception.code, "too_large")

    def test_a_lone_surrogate_is_refused(self) -> None:
        """orjson refuses it in the request's JSON; where a long number sends the text to the
        standard library, which lets it through, it reaches v1's chat parser as an ASCII
        escape, which refuses it there."""
        chat = {"messages": [{"role": "user", "content": "\ud800"}]}
        self.assertRefused("malformed", crafted(plaintext({"chat": chat})))
        chat = {"messages": [{"role": "user", "content": "\ud800 1234567890123456789"}]}
        opened = open_chat_request(KEYS, crafted(plaintext({"chat": chat})))
        self.assertRaises(BadChatRequest, parse_chat_request, opened.chat_plaintext, chat_limits())


def exchange(suite: SymmetricSuite = CHACHA) -> tuple[SealedV2, OpenedV2]:
    sealed = seal_chat_request(CONFIG, DEVICE, CHAT, T, suite=suite)
    return sealed, open_chat_request(KEYS, sealed.body)


def raw_answer(context: Context, chunks: list[bytes], final: bytes) -> bytes:
    """An answer sealed chunk by chunk from BHTTP bytes chosen by the test."""
    sealer = ChunkedResponseSealer(context)
    return b"".join(sealer.seal(chunk) for chunk in chunks) + sealer.seal(final, final=True)


HEAD = ResponseEncoder().head(200, ((b"content-type", EVENTS_TYPE),))


def chunk(line: bytes) -> bytes:
    return bhttp_content(line)


def bhttp_content(data: bytes) -> bytes:
    encoder = ResponseEncoder()
    encoder.head(200)
    return encoder.content(data)


END = b"\x00\x00"
DELTA = b'{"type":"delta","text":"x"}\n'
DONE_LINE = json.dumps(DONE).encode() + b"\n"


class HostileAnswers(ErrorAssertions):
    def setUp(self) -> None:
        self.sealed, self.opened = exchange()
        self.server, self.client = self.opened.context, self.sealed.context

    def test_the_raw_answer_is_sound(self) -> None:
        reader = ResponseReader(self.client)
        wire = raw_answer(self.server, [HEAD, chunk(DELTA)], chunk(DONE_LINE) + END)
        self.assertEqual(reader.feed(wire) + reader.end(), [{"type": "delta", "text": "x"}, DONE])

    def test_truncated(self) -> None:
        wire = self.answer()
        final_at = len(wire) - len(self.final_chunk())
        for n in range(len(wire)):
            reader = ResponseReader(self.client)
            with self.assertRaises(StreamError) as cm:
                reader.feed(wire[:n])
                reader.end()
            if n <= final_at:  # the zero length that opens the final chunk not yet read
                self.assertEqual(cm.exception.kind, "truncated", n)
            else:  # the final chunk runs to the end of the body: cut short, it does not open
                self.assertEqual(cm.exception.kind, "tampered", n)

    def test_a_delta_in_the_final_chunk(self) -> None:
        self.assertBroken("malformed", raw_answer(self.server, [HEAD], chunk(DELTA) + END), self.client)
        both = raw_answer(self.server, [HEAD], chunk(DELTA + DONE_LINE) + END)
        self.assertBroken("malformed", both, self.client)

    def test_an_event_after_the_last(self) -> None:
        after = raw_answer(self.server, [HEAD], chunk(DONE_LINE + DELTA) + END)
        self.assertBroken("after_final", after, self.client)
        early = raw_answer(self.server, [HEAD, chunk(DONE_LINE)], chunk(DELTA) + END)
        self.assertBroken("malformed", early, self.client)

    def test_the_last_event_or_end_before_the_final_chunk(self) -> None:
        self.assertBroken("malformed", raw_answer(self.server, [HEAD, chunk(DONE_LINE)], b""), self.client)
        ended_early = raw_answer(self.server, [HEAD, chunk(DONE_LINE) + END], b"")
        self.assertBroken("malformed", ended_early, self.client)

    def test_no_end_in_the_final_chunk(self) -> None:
        self.assertBroken("truncated", raw_answer(self.server, [HEAD], chunk(DONE_LINE)), self.client)
        self.assertBroken("malformed", raw_answer(self.server, [HEAD], END), self.client)  # no last event

    def test_a_chunk_after_the_final_one(self) -> None:
        wire = self.answer()
        extra = ChunkedResponseSealer(self.server).seal(chunk(DELTA))[32:]
        self.assertBroken("tampered", wire + extra, self.client)
        reader = ResponseReader(self.client)
        reader.feed(wire)
        reader.end()
        self.assertRaises(StreamError, reader.feed, b"")

    def test_tampered_bytes(self) -> None:
        wire = self.answer()
        for index in range(len(wire)):
            flipped = bytearray(wire)
            flipped[index] ^= 0x40
            reader = ResponseReader(self.client)
            with self.assertRaises(StreamError, msg=str(index)):
                reader.feed(bytes(flipped))
                reader.end()

    def test_another_requests_context(self) -> None:
        other, _ = exchange()
        self.assertBroken("tampered", self.answer(), other.context)

    def test_lines_that_are_no_events(self) -> None:
        for line in (
            b"not json\n",
            b"\n",
            b"[]\n",
            b'{"text":"x"}\n',
            b'{"type":"delta"}\n',
            b'{"type":"delta","text":1}\n',
            b'{"type":"mystery"}\n',
            b'{"type":"delta",\x00"text":"x"}\n',
            b'\x01{"type":"delta","text":"x"}\n',
        ):
            wire = raw_answer(self.server, [HEAD, chunk(line)], chunk(DONE_LINE) + END)
            self.assertBroken("malformed", wire, self.client)

    def test_a_line_beyond_the_event_bound(self) -> None:
        reader = ResponseReader(self.client, max_event=64)
        sealer = ChunkedResponseSealer(self.server)
        with self.assertRaises(StreamError) as cm:
            reader.feed(sealer.seal(HEAD) + sealer.seal(chunk(b'{"type":"delta","text":"' + b"x" * 64)))
        self.assertEqual(cm.exception.kind, "malformed")

    def test_heads_outside_the_allow_list(self) -> None:
        for status, headers in (
            (200, ()),
            (200, ((b"content-type", b"text/event-stream"),)),
            (200, ((b"content-type", EVENTS_TYPE),) * 2),
            (200, ((b"content-type", EVENTS_TYPE), (b"set-cookie", b"a=b"))),
            (200, ((b"content-type", EVENTS_TYPE), (b"date", b"Thu, 01 Jan 2026 01:00:30 UTC"))),
            (200, ((b"content-type", EVENTS_TYPE), (b"date", b"Fri, 01 Jan 2026 01:00:30 GMT"))),
            (200, ((b"content-type", EVENTS_TYPE), (b"date", b"1767229230"))),
        ):
            head = ResponseEncoder().head(status, headers)
            self.assertBroken("malformed", raw_answer(self.server, [head], chunk(DONE_LINE) + END), self.client)
        informational = b"\x03\x40\x67\x00" + HEAD[1:]
        self.assertBroken("malformed", raw_answer(self.server, [informational], chunk(DONE_LINE) + END), self.client)

    def test_a_refusal_carries_one_error_and_nothing_else(self) -> None:
        head = ResponseEncoder().head(401, ((b"content-type", EVENTS_TYPE),))
        self.assertBroken(
            "malformed", raw_answer(self.server, [head, chunk(DELTA)], chunk(DONE_LINE) + END), self.client
        )
        self.assertBroken("malformed", raw_answer(self.server, [head], chunk(DONE_LINE) + END), self.client)

    def test_the_stream_refuses_misuse(self) -> None:
        stream = ResponseStream(self.server, 32)
        self.assertRaises(BinaryHttpStateError, stream.event, {"type": "delta", "text": "x"})
        self.assertRaises(BinaryHttpStateError, stream.keepalive)
        stream.start()
        self.assertRaises(BinaryHttpStateError, stream.start)
        self.assertRaises(ValueError, stream.event, DONE)
        self.assertRaises(ValueError, stream.event, {"type": "error", "code": "x"})
        self.assertRaises(ValueError, stream.final, {"type": "delta", "text": "x"})
        self.assertRaises(BinaryHttpStateError, stream.refusal, 401, {"type": "error", "code": "stale"})
        stream.final(DONE)
        self.assertRaises((BinaryHttpStateError, ChunkStateError), stream.event, {"type": "delta", "text": "x"})
        self.assertRaises((BinaryHttpStateError, ChunkStateError), stream.final, DONE)
        self.assertRaises(ValueError, ResponseStream(self.server, 32).refusal, 401, DONE)

    def answer(self) -> bytes:
        stream = ResponseStream(self.server, 32)
        return stream.start() + stream.event({"type": "delta", "text": "Hi"}) + stream.final(DONE)

    def final_chunk(self) -> bytes:
        """The length the final chunk takes on the wire: its zero length, then the sealed bytes."""
        line = json.dumps(DONE, separators=(",", ":")).encode() + b"\n"
        padded = len(line) + (-len(line)) % 32
        return bytes(1 + len(bhttp_content(bytes(padded))) + len(END) + 16)


class RoundTrips(TestCase):
    def test_requests_in_each_suite(self) -> None:
        for suite in (CHACHA, AES128):
            sealed, opened = exchange(suite)
            self.assertEqual(peek(sealed.body), (7, suite, sealed.enc))
            self.assertEqual((opened.enc, opened.key_id, opened.timestamp), (sealed.enc, 7, T))
            self.assertEqual(opened.device_pubkey, DEVICE_PUBLIC)
            request = parse_chat_request(opened.chat_plaintext, chat_limits())
            self.assertEqual(request.messages[0].content, "Hi, wörld")
            self.assertEqual(request.max_tokens, 20)

    def test_the_authority_is_the_clients(self) -> None:
        sealed = seal_chat_request(CONFIG, DEVICE, CHAT, T, authority="chat.example")
        self.assertEqual(open_chat_request(KEYS, sealed.body).timestamp, T)

    def test_answers_over_any_split(self) -> None:
        sealed, opened = exchange()
        stream = ResponseStream(opened.context, 64)
        events = [{"type": "delta", "text": t} for t in ("Hel", "lo ", "wörld", "x" * 500)]
        wire = stream.start() + stream.keepalive()
        wire += b"".join(stream.event(e) for e in events) + stream.keepalive() + stream.final(DONE)
        rng = random.Random(9458)
        for _ in range(100):
            cuts = sorted(rng.sample(range(1, len(wire)), rng.randrange(0, 20)))
            reader = ResponseReader(sealed.context)
            got = [e for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True) for e in reader.feed(wire[a:b])]
            self.assertEqual((got, reader.end()), (events, [DONE]))
            self.assertEqual((reader.status, reader.date, reader.finished), (200, None, True))

    def test_events_open_as_their_chunks_arrive(self) -> None:
        sealed, opened = exchange()
        stream = ResponseStream(opened.context, 64)
        reader = ResponseReader(sealed.context)
        self.assertEqual(reader.feed(stream.start()), [])
        self.assertEqual(reader.status, 200)
        self.assertEqual(reader.feed(stream.event({"type": "delta", "text": "a"})), [{"type": "delta", "text": "a"}])
        self.assertEqual(reader.feed(stream.keepalive()), [])

    def test_padding_hides_lengths_within_a_step(self) -> None:
        _, opened = exchange()
        stream = ResponseStream(opened.context, 64)
        stream.start()
        sizes = {len(stream.event({"type": "delta", "text": "x" * n})) for n in range(1, 30)}
        self.assertEqual(sizes, {len(stream.keepalive())})  # one size: that of 64 bytes of padding
        self.assertEqual(len(stream.event({"type": "delta", "text": "x" * 40})), len(stream.keepalive()) + 64)

    def test_an_event_longer_than_a_chunk(self) -> None:
        sealed, opened = exchange()
        stream = ResponseStream(opened.context, 64)
        long = {"type": "delta", "text": "y" * (3 * MAX_CHUNK)}
        error = {"type": "error", "code": "upstream_failed", "message": "z" * MAX_CHUNK}
        reader = ResponseReader(sealed.context)
        self.assertEqual(reader.feed(stream.start() + stream.event(long) + stream.final(error)), [long])
        self.assertEqual(reader.end(), [error])

    def test_a_refusal_with_the_routers_time(self) -> None:
        sealed, opened = exchange()
        wire = ResponseStream(opened.context, 64).refusal(401, {"type": "error", "code": "stale"}, date=T)
        reader = ResponseReader(sealed.context)
        self.assertEqual(reader.feed(wire), [])
        self.assertEqual(reader.end(), [{"type": "error", "code": "stale"}])
        self.assertEqual((reader.status, reader.date), (401, T))

    def test_http_dates(self) -> None:
        self.assertEqual(http_date(T), b"Thu, 01 Jan 2026 01:00:30 GMT")
        self.assertEqual(parse_http_date(http_date(T)), T)
        for bad in (
            b"Thursday, 01-Jan-26 01:00:30 GMT",
            b"Thu, 1 Jan 2026 01:00:30 GMT",
            b"Thu, 30 Feb 2026 01:00:30 GMT",
        ):
            self.assertRaises(ValueError, parse_http_date, bad)


def varint(data: bytes, at: int) -> tuple[int, int]:
    """RFC 9000 section 16, written out again."""
    size = 1 << (data[at] >> 6)
    value = data[at] & 0x3F
    for byte in data[at + 1 : at + size]:
        value = value << 8 | byte
    return value, at + size


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block = b"", b""
    for counter in range(1, 1 + (length + 31) // 32):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


class Independent(TestCase):
    """Both directions with equipment sharing nothing with privllm.protocol."""

    def test_a_request_opens_with_the_equipment(self) -> None:
        sealed = seal_chat_request(CONFIG, DEVICE, CHAT, T)
        header, enc, ciphertext = sealed.body[:7], sealed.body[7:39], sealed.body[39:]
        self.assertEqual(header, bytes.fromhex("07002000010003"))
        receiver = rfc9180.setup_base_receiver(enc, ROUTER_PRIVATE, b"message/bhttp request\x00" + header, rfc9180.AEAD)
        plaintext = receiver.open(b"", ciphertext)
        # Known-length Binary HTTP by hand: framing 0, then four control data strings
        at, fields = 1, []
        self.assertEqual(plaintext[0], 0)
        for _ in range(4):
            length, at = varint(plaintext, at)
            fields.append(plaintext[at : at + length])
            at += length
        self.assertEqual(fields, [b"POST", b"https", b"privllm", b"/api/chat"])
        section, at = varint(plaintext, at)
        self.assertEqual(plaintext[at : at + section], b"\x0ccontent-type\x10application/json")
        length, at = varint(plaintext, at + section)
        body = json.loads(plaintext[at : at + length])
        self.assertIn(plaintext[at + length :], (b"", b"\x00"))  # trailers empty, maybe truncated
        self.assertEqual(set(body), {"v", "timestamp", "device_pubkey", "proof", "chat"})
        self.assertEqual((body["v"], body["timestamp"], body["chat"]), (2, T, CHAT))
        self.assertEqual(body["device_pubkey"], b64(DEVICE_PUBLIC))
        self.assertEqual(body["proof"], b64(independent_proof(DEVICE, ROUTER_PUBLIC, enc, T)))

    def test_an_equipment_request_opens_at_the_router_and_its_answer_with_the_equipment(self) -> None:
        header = bytes.fromhex("07002000010003")
        enc, sender = rfc9180.setup_base_sender(
            ROUTER_PUBLIC, b"message/bhttp request\x00" + header, bytes(range(64, 96)), rfc9180.AEAD
        )
        body = {
            "v": 2,
            "timestamp": T,
            "device_pubkey": b64(DEVICE_PUBLIC),
            "proof": b64(independent_proof(DEVICE, ROUTER_PUBLIC, enc, T)),
            "chat": CHAT,
        }
        content = json.dumps(body).encode()
        ct = b"\x0ccontent-type\x10application/json"
        plaintext = b"\x00\x04POST\x05https\x00\x09/api/chat" + bytes([len(ct)]) + ct
        plaintext += (0x4000 | len(content)).to_bytes(2, "big") + content + b"\x00"
        opened = open_chat_request(KEYS, header + enc + sender.seal(b"", plaintext))
        self.assertEqual(json.loads(opened.chat_plaintext), CHAT)

        stream = ResponseStream(opened.context, 16)
        wire = stream.start() + stream.event({"type": "delta", "text": "ok"}) + stream.keepalive() + stream.final(DONE)
        # The chunked response by hand: nonce, key and nonce base (RFC 9458 section 4.4, the draft's label)
        nonce, at = wire[:32], 32
        secret = sender.export(b"message/bhttp chunked response", 32)
        prk = hmac.new(enc + nonce, secret, hashlib.sha256).digest()
        aead = ChaCha20Poly1305(hkdf_expand(prk, b"key", 32))
        base = int.from_bytes(hkdf_expand(prk, b"nonce", 12), "big")
        chunks, index = [], 0
        while True:
            length, at = varint(wire, at)
            final = length == 0
            sealed = wire[at:] if final else wire[at : at + length]
            chunks.append(aead.decrypt((base ^ index).to_bytes(12, "big"), sealed, b"final" if final else b""))
            if final:
                break
            at, index = at + length, index + 1
        self.assertEqual(len(chunks), 4)
        # Indeterminate-length Binary HTTP by hand: framing 3, status 200, one field, terminator
        self.assertEqual(chunks[0], b"\x03\x40\xc8\x0ccontent-type\x1aapplication/privllm-events\x00")
        content_bytes = b""
        for plain in chunks[1:]:
            length, at = varint(plain, 0)
            self.assertEqual(length % 16, 0)  # each content chunk padded
            content_bytes += plain[at : at + length]
        self.assertEqual(chunks[-1][-2:], b"\x00\x00")  # content terminator, empty trailers
        lines = [json.loads(line) for line in content_bytes.replace(b"\x00", b"").split(b"\n") if line]
        self.assertEqual(lines, [{"type": "delta", "text": "ok"}, DONE])
        self.assertEqual(len(chunks[2]), 1 + 16)  # the keep-alive: 16 bytes of padding


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class LongLines(TestCase):
    """A last event or a padding longer than one chunk holds: its newline still opens in the
    final chunk, and a keep-alive fits one chunk, at every padding the schema allows."""

    def test_every_padding_and_a_long_last_event(self) -> None:
        long_error = {"type": "error", "code": "internal", "message": "x" * 40000}
        for pad_to in (0, 64, 16383, 16384, 65536):
            for last in (long_error, {"type": "done", "finish_reason": "stop", "usage": {}}):
                sealed, opened = exchange()
                stream = ResponseStream(opened.context, pad_to)
                body = stream.start() + stream.keepalive() + stream.event({"type": "delta", "text": "hi"})
                body += stream.final(last)
                reader = ResponseReader(sealed.context)
                events = reader.feed(body) + reader.end()
                self.assertEqual(events, [{"type": "delta", "text": "hi"}, last], (pad_to, last["type"]))
                refused = ResponseStream(opened.context, pad_to).refusal(401, long_error, date=T)
                reader = ResponseReader(sealed.context)
                self.assertEqual(reader.feed(refused) + reader.end(), [long_error], pad_to)
