"""
The client speaking protocol v2 (PrivllmClient(protocol=2), privllm-chat --protocol 2) against
a hostile gateway first, then a well-behaved one.

The gateway is synthetic test equipment (`SyntheticGateway`): an HTTPS server on loopback in
this process, built from the sans-IO router pieces (GatewayKey, open_chat_request,
ResponseStream, sign_key_configs, Challenges) and answering what each test scripts. Its
answers are written in several pieces over time, so the client reads them as they arrive.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.internet import reactor as _reactor
from twisted.internet import ssl
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ..client import NetworkError, PrivllmClient, ProtocolFailure, ServerError, TruncatedError
from ..client.api import POW_HEADER, ProofOfWorkRefused, StaleClock
from ..client.cli import parse_args
from ..keys.files import ensure_private_dir
from ..keys.material import ensure_dev_certificate
from ..protocol.encoding import b64decode, b64encode, dumps
from ..protocol.keyset import KEYSET_CLOCK_SKEW
from ..protocol.ohttp.message import GatewayKey
from ..protocol.pow import CHALLENGE_SIZE, Challenges, leading_zero_bits, work_hash
from ..protocol.suite import POW_MAX_DIFFICULTY
from ..protocol.v2.keys import HEADERS, key_config, sign_key_configs
from ..protocol.v2.request import OpenedV2, open_chat_request, peek, seal_chat_request
from ..protocol.v2.response import ResponseStream
from .test_ohttp import key_pair

reactor: Any = _reactor
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WINDOW, FUTURE_SKEW = 60, 5  # the gateway's timestamp window, as the router's defaults
PAD_TO = 32
HELLO = {"messages": [{"role": "user", "content": "hi"}]}
DONE = {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 3}}
STALE = {"type": "error", "code": "stale", "message": "the request's time is outside the window"}
Answer = Callable[["SyntheticGateway", Request, OpenedV2], list[bytes]]


def delta(text: str) -> dict[str, Any]:
    return {"type": "delta", "text": text}


def new_key(key_id: int) -> GatewayKey:
    private = os.urandom(32)
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    return GatewayKey(key_config(key_id, public), key_pair(private).private_key)


def resplit(pieces: list[bytes], size: int) -> list[bytes]:
    """The same bytes cut every `size` bytes, across the sealed chunks' boundaries."""
    joined = b"".join(pieces)
    return [joined[i : i + size] for i in range(0, len(joined), size)]


def events(*items: dict[str, Any], final: dict[str, Any] | None = DONE, size: int | None = None) -> Answer:
    """A sealed answer of these events, then `final` (None: no final chunk), written in pieces."""

    def answer(gateway: SyntheticGateway, request: Request, opened: OpenedV2) -> list[bytes]:
        stream = ResponseStream(opened.context, PAD_TO)
        pieces = [stream.start()] + [stream.event(e) for e in items] + ([stream.final(final)] if final else [])
        return resplit(pieces, size) if size else pieces

    return answer


def tampered(answer: Answer, index: int) -> Answer:
    """`answer` with one byte flipped at `index` of the whole body (negative: from its end)."""

    def changed(gateway: SyntheticGateway, request: Request, opened: OpenedV2) -> list[bytes]:
        body = bytearray(b"".join(answer(gateway, request, opened)))
        body[index] ^= 0x01
        return [bytes(body)]

    return changed


def cut(answer: Answer, drop: int) -> Answer:
    """`answer` without its last `drop` bytes."""
    return lambda gateway, request, opened: [b"".join(answer(gateway, request, opened))[:-drop]]


def raw(status: int, body: bytes, headers: dict[bytes, bytes] | None = None) -> Answer:
    def answer(gateway: SyntheticGateway, request: Request, opened: OpenedV2) -> list[bytes]:
        request.setResponseCode(status)
        for name, value in (headers or {}).items():
            request.setHeader(name, value)
        return [body]

    return answer


class SyntheticGateway(Resource):
    """Synthetic test equipment: GET /api/ohttp-keys and POST /api/ohttp as a v2 router
    answers them (screens before decryption, the timestamp window, the inner 401 stale with
    the date), each part scriptable."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.identity = Ed25519PrivateKey.generate()
        self.keys = {1: new_key(1)}
        self.key_answers: list[Callable[[Request], bytes]] = []  # one per fetch; the last repeats
        self.fetches: list[Request] = []
        self.posts: list[tuple[bytes, Request]] = []
        self.answer: Answer = events(delta("hel"), delta("lo"), size=40)
        self.clock_skew = 0  # the gateway's clock minus the client's
        self.pow_difficulty = 0
        self.challenges = Challenges(os.urandom(32), 60)
        self.issued: set[str] = set()
        self.end = "finish"  # or "lose": the connection drops after the last piece
        self.written: list[bytes] = []
        self.pending: list[Any] = []

    def now(self) -> int:
        return int(time.time()) + self.clock_skew

    def signed_keys(self, request: Request, issued: int | None = None, lifetime: int = 3600) -> bytes:
        issued = int(time.time()) if issued is None else issued
        signed = sign_key_configs([key.config for key in self.keys.values()], issued, issued + lifetime, self.identity)
        for name, value in signed.headers():
            request.setHeader(name, value)
        return signed.body

    def render_GET(self, request: Request) -> bytes:
        self.fetches.append(request)
        if request.path != b"/api/ohttp-keys":
            request.setResponseCode(404)
            return b"{}"
        request.setHeader(b"content-type", b"application/ohttp-keys")
        script = self.key_answers[min(len(self.fetches), len(self.key_answers)) - 1] if self.key_answers else None
        return script(request) if script else self.signed_keys(request)

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        body = request.content.read()
        self.posts.append((body, request))
        if request.path != b"/api/ohttp" or request.getHeader(b"content-type") != b"message/ohttp-req":
            return self.refuse(request, 415, "unsupported_media_type")
        peeked = peek(body)
        if peeked.key_id not in self.keys:
            return self.refuse(request, 422, "unknown_key")
        if self.pow_difficulty and not self.pow_done(request, peeked.enc):
            request.setResponseCode(429)
            demand = self.challenges.issue(self.pow_difficulty, time.time(), "client")
            self.issued.add(str(demand["challenge"]))
            return dumps(demand)
        opened = open_chat_request(self.keys, body)
        request.setHeader(b"content-type", b"message/ohttp-chunked-res")
        now = self.now()
        if not now - WINDOW <= opened.timestamp <= now + FUTURE_SKEW:
            return ResponseStream(opened.context, PAD_TO).refusal(401, STALE, date=now)
        self.write_over_time(request, self.answer(self, request, opened))
        return NOT_DONE_YET

    def refuse(self, request: Request, status: int, code: str) -> bytes:
        request.setResponseCode(status)
        return dumps({"error": code})

    def pow_done(self, request: Request, enc: bytes) -> bool:
        """A Privllm-Pow header whose work is bound to this request's enc."""
        value = request.getHeader(POW_HEADER)
        if value is None:
            return False
        challenge, nonce = value.decode("ascii").split(".")
        assert challenge in self.issued
        digest = work_hash(base64.b64decode(challenge), enc, base64.b64decode(nonce))
        return leading_zero_bits(digest) >= self.pow_difficulty

    def write_over_time(self, request: Request, pieces: list[bytes]) -> None:
        """One write per piece, 10 ms apart: the client sees them arrive separately."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def step(i: int) -> None:
            if gone:
                return
            if i < len(pieces):
                self.written.append(pieces[i])
                request.write(pieces[i])
                self.pending.append(reactor.callLater(0.01, step, i + 1))
            elif self.end == "finish":
                request.finish()
            else:
                request.loseConnection()

        step(0)

    def stop(self) -> None:
        for call in self.pending:
            if call.active():
                call.cancel()


class Equipment(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        ensure_private_dir(self.dir)
        cert, key = ensure_dev_certificate(self.dir, ["127.0.0.1"])
        self.ca = cert
        with open(cert, "rb") as c, open(key, "rb") as k:
            self.root = c.read()
            self.options = ssl.PrivateCertificate.loadPEM(self.root + k.read()).options()
        self.gateway = SyntheticGateway()
        self.addCleanup(self.gateway.stop)
        port = reactor.listenSSL(0, Site(self.gateway), self.options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"https://127.0.0.1:{port.getHost().port}"
        self.pin = self.gateway.identity.public_key().public_bytes_raw()
        self.device = os.urandom(32)

    def client(self, pin: bytes | None = None, **options: Any) -> PrivllmClient:
        client = PrivllmClient(reactor, self.url, pin or self.pin, self.device, self.root, protocol=2, **options)
        self.addCleanup(client.close)
        return client

    async def failure(self, kind: type[Exception], client: PrivllmClient | None = None) -> Any:
        with self.assertRaises(kind) as cm:
            await (client or self.client()).chat(HELLO)
        return cm.exception

    def opened(self, index: int) -> OpenedV2:
        return open_chat_request(self.gateway.keys, self.gateway.posts[index][0])


class HostileKeys(Equipment):
    async def test_wrong_pin(self) -> None:
        error = await self.failure(
            ProtocolFailure, self.client(pin=Ed25519PrivateKey.generate().public_key().public_bytes_raw())
        )
        self.assertIn("other than the pinned identity", str(error))
        self.assertEqual(self.gateway.posts, [], "nothing is sealed to unverified keys")

    async def test_bad_signature(self) -> None:
        def bad(request: Request) -> bytes:
            body = self.gateway.signed_keys(request)
            request.setHeader(HEADERS[3], base64.b64encode(bytes(64)))
            return body

        def repeated(request: Request) -> bytes:
            body = self.gateway.signed_keys(request)
            values = request.responseHeaders.getRawHeaders(HEADERS[3]) or []
            request.responseHeaders.setRawHeaders(HEADERS[3], [*values, *values])
            return body

        scripts: list[tuple[Callable[[Request], bytes], str]] = [
            (bad, "bad signature"),
            (repeated, "malformed key configurations"),
            (lambda r: self.gateway.signed_keys(r)[:-1], "bad signature"),
        ]
        for script, why in scripts:
            self.gateway.key_answers = [script]
            self.assertIn(why, str(await self.failure(ProtocolFailure)))
        self.assertEqual(self.gateway.posts, [])

    async def test_stale_key_configs_fetched_once_more_past_caches(self) -> None:
        old = int(time.time()) - 3600 - KEYSET_CLOCK_SKEW - 5
        self.gateway.key_answers = [lambda r: self.gateway.signed_keys(r, issued=old)]
        self.assertIn("expired", str(await self.failure(ProtocolFailure)))
        self.assertEqual([r.getHeader(b"cache-control") for r in self.gateway.fetches], [None, b"no-cache"])
        future = int(time.time()) + 600
        self.gateway.key_answers = [lambda r: self.gateway.signed_keys(r, issued=future)]
        self.assertIn("not valid yet", str(await self.failure(ProtocolFailure)))
        self.gateway.fetches = []
        self.gateway.key_answers = [lambda r: self.gateway.signed_keys(r, issued=old), self.gateway.signed_keys]
        self.assertEqual((await self.client().chat(HELLO)).text, "hello")
        self.assertEqual(len(self.gateway.fetches), 2)

    async def test_keys_unavailable_or_too_large(self) -> None:
        def failing(request: Request) -> bytes:
            request.setResponseCode(503)
            return b"x" * 100

        self.gateway.key_answers = [failing]
        error = await self.failure(ServerError)
        self.assertEqual((error.code, error.status), ("ohttp_keys_unavailable", 503))
        self.gateway.key_answers = [lambda r: bytes(1 << 16)]
        self.assertIn("too large", str(await self.failure(ProtocolFailure)))


class HostileAnswers(Equipment):
    async def test_tampered_answers(self) -> None:
        """A flipped byte anywhere (nonce, a delta's chunk, the final chunk), another request's
        answer, or garbage: ProtocolFailure, whatever arrived before it."""
        whole = events(delta("hel"), delta("lo"))
        for answer in (tampered(whole, 3), tampered(whole, 60), tampered(whole, -1), tampered(whole, -20)):
            self.gateway.answer = answer
            await self.failure(ProtocolFailure)
        other = new_key(9)

        def for_another_request(gateway: SyntheticGateway, request: Request, opened: OpenedV2) -> list[bytes]:
            sealed = seal_chat_request(other.config, self.device, HELLO, gateway.now())
            return events(delta("x"))(gateway, request, open_chat_request({9: other}, sealed.body))

        self.gateway.answer = for_another_request
        await self.failure(ProtocolFailure)
        self.gateway.answer = raw(200, bytes(32) + b"\x20" + bytes(32) + b"\x00" + bytes(40))  # chunks that do not open
        await self.failure(ProtocolFailure)

    async def test_truncated_answers(self) -> None:
        """No final chunk, the connection dropped mid-answer, or nothing: TruncatedError; the
        deltas before the cut were handed on."""
        seen: list[dict[str, Any]] = []
        self.gateway.answer = events(delta("half"), final=None)
        with self.assertRaises(TruncatedError):
            await self.client().chat(HELLO, seen.append)
        self.assertEqual(seen, [delta("half")])
        self.gateway.end = "lose"
        for answer in (events(delta("half"), final=None), cut(events(delta("half")), 5)):
            self.gateway.answer = answer
            error = await self.failure(TruncatedError)
            self.assertIn("connection broke", str(error))
        self.gateway.answer = events(delta("whole"))
        self.assertEqual((await self.client().chat(HELLO)).text, "whole", "the final chunk opened: the answer is whole")
        self.gateway.end = "finish"
        self.gateway.answer = raw(200, b"")
        await self.failure(TruncatedError)

    async def test_final_chunk_cut_with_a_clean_end_is_tampering(self) -> None:
        """A final chunk shortened while the HTTP body ends cleanly fails the AEAD: the bytes are
        what the other end sent, so this is a protocol failure, not a truncation."""
        self.gateway.answer = cut(events(delta("hel")), 3)
        self.assertIn("tampered", str(await self.failure(ProtocolFailure)))

    async def test_sealed_errors(self) -> None:
        self.gateway.answer = events(
            delta("x"), final={"type": "error", "code": "rate_limited", "message": "slow", "retry_after": 7}
        )
        error = await self.failure(ServerError)
        self.assertEqual((error.code, error.retry_after), ("rate_limited", 7))
        self.gateway.answer = events(final={"type": "error", "code": "\x1b]0;owned\x07", "message": ""})
        self.assertEqual((await self.failure(ServerError)).code, "unknown")

    async def test_plaintext_refusals(self) -> None:
        self.gateway.answer = raw(429, b'{"error":"rate_limited"}', {b"retry-after": b"9"})
        error = await self.failure(ServerError)
        self.assertEqual((error.code, error.status, error.retry_after), ("rate_limited", 429, 9))
        self.gateway.answer = raw(503, b'{"error":"unavailable"}')
        self.assertEqual((await self.failure(ServerError)).code, "unavailable")
        self.assertEqual(len(self.gateway.posts), 2, "one post each: no retry")

    async def test_unknown_key_twice_is_an_error(self) -> None:
        client = self.client()
        await client.fetch_key_configs()
        self.gateway.keys = {2: new_key(2)}

        def always_unknown(gateway: SyntheticGateway, request: Request, opened: OpenedV2) -> list[bytes]:
            request.setResponseCode(422)
            return [b'{"error":"unknown_key"}']

        self.gateway.answer = always_unknown
        self.assertEqual((await self.failure(ServerError, client)).code, "unknown_key")
        self.assertEqual(len(self.gateway.posts), 2)

    async def test_stale_twice_is_an_error(self) -> None:
        """The clock is corrected once; a router still calling the request stale is refused."""
        self.gateway.clock_skew = 600

        def moving(gateway: SyntheticGateway, request: Request, opened: OpenedV2) -> list[bytes]:
            return [ResponseStream(opened.context, PAD_TO).refusal(401, STALE, date=gateway.now() + 600)]

        self.gateway.answer = moving
        error = await self.failure(StaleClock)
        self.assertEqual((error.code, error.status), ("stale", 401))
        self.assertEqual(len(self.gateway.posts), 2)

    async def test_a_date_more_than_a_day_off_is_not_taken(self) -> None:
        """Only the router's key authenticates the date: one from 1900 made every later chat of
        the client fail while sealing (a negative timestamp), with a traceback."""
        self.gateway.answer = lambda g, r, opened: [
            ResponseStream(opened.context, PAD_TO).refusal(401, STALE, date=-2208988800)
        ]
        client = self.client()
        error = await self.failure(ProtocolFailure, client)
        self.assertIn("more than a day", str(error))
        self.assertEqual(len(self.gateway.posts), 1)
        self.gateway.answer = events(delta("hel"), delta("lo"), size=40)  # the router answers again
        self.assertEqual((await client.chat(HELLO)).text, "hello", "the client was left as it was")

    async def test_stale_without_a_date_is_not_retried(self) -> None:
        self.gateway.answer = lambda g, r, opened: [ResponseStream(opened.context, PAD_TO).refusal(401, STALE)]
        error = await self.failure(ServerError)
        self.assertNotIsInstance(error, StaleClock)
        self.assertEqual(error.code, "stale")
        self.assertEqual(len(self.gateway.posts), 1)

    async def test_proof_of_work_ceiling(self) -> None:
        self.gateway.pow_difficulty = POW_MAX_DIFFICULTY
        error = await self.failure(ProofOfWorkRefused, self.client(max_pow_difficulty=8))
        self.assertIn("maximum of 8", str(error))
        self.assertEqual(len(self.gateway.posts), 1)

    async def test_unreachable(self) -> None:
        self.url = "https://127.0.0.1:1"
        await self.failure(NetworkError)


class Answers(Equipment):
    async def test_deltas_arrive_as_they_are_written(self) -> None:
        """Several deltas in pieces cut across chunks, each written separately: every delta
        reaches the callback before the last piece is written."""
        self.gateway.answer = events(delta("one "), delta("two "), delta("three"), size=23)
        seen: list[tuple[str, int]] = []
        result = await self.client().chat(HELLO, lambda c: seen.append((c["type"], len(self.gateway.written))))
        self.assertEqual((result.text, result.finish_reason), ("one two three", "stop"))
        pieces = len(self.gateway.written)
        self.assertGreater(pieces, 5)
        self.assertEqual([kind for kind, _ in seen], ["delta", "delta", "delta", "done"])
        self.assertTrue(all(written < pieces for _, written in seen[:3]), (seen, pieces))
        self.assertEqual(seen[-1][1], pieces)
        opened = self.opened(0)
        self.assertEqual(
            opened.device_pubkey, X25519PrivateKey.from_private_bytes(self.device).public_key().public_bytes_raw()
        )
        self.assertLessEqual(abs(opened.timestamp - time.time()), 2)

    async def test_keepalives_are_not_events(self) -> None:
        def with_keepalives(gateway: SyntheticGateway, request: Request, opened: OpenedV2) -> list[bytes]:
            stream = ResponseStream(opened.context, PAD_TO)
            return [
                stream.start(),
                stream.keepalive(),
                stream.event(delta("a")),
                stream.keepalive(),
                stream.final(DONE),
            ]

        self.gateway.answer = with_keepalives
        result = await self.client().chat(HELLO)
        self.assertEqual([c["type"] for c in result.chunks], ["delta", "done"])

    async def test_keys_held_while_fresh(self) -> None:
        client = self.client()
        await client.chat(HELLO)
        await client.chat(HELLO)
        self.assertEqual(len(self.gateway.fetches), 1)
        self.assertNotEqual(peek(self.gateway.posts[0][0]).enc, peek(self.gateway.posts[1][0]).enc)

    async def test_proof_of_work_round_trip(self) -> None:
        """Asked for work, the client solves it over the request's enc and sends the same body again."""
        self.gateway.pow_difficulty = 6
        self.assertEqual((await self.client().chat(HELLO)).text, "hello")
        (first, asked), (second, solved) = self.gateway.posts
        self.assertEqual(first, second, "the same sealed request, so the work bound to its enc holds")
        self.assertIsNone(asked.getHeader(POW_HEADER))
        header = solved.getHeader(POW_HEADER)
        assert header is not None
        challenge, nonce = header.decode("ascii").split(".")  # <b64 challenge>.<b64 nonce>, canonical base64 each
        digest = work_hash(b64decode(challenge, CHALLENGE_SIZE), peek(second).enc, b64decode(nonce, max_length=64))
        self.assertGreaterEqual(leading_zero_bits(digest), 6)

    async def test_unknown_key_refetches_once_past_caches(self) -> None:
        client = self.client()
        await client.fetch_key_configs()  # key 1, then the gateway rotates to key 2
        self.gateway.keys = {2: new_key(2)}
        self.assertEqual((await client.chat(HELLO)).text, "hello")
        self.assertEqual([r.getHeader(b"cache-control") for r in self.gateway.fetches], [None, b"no-cache"])
        self.assertEqual([peek(body).key_id for body, _ in self.gateway.posts], [1, 2])

    async def test_stale_clock_corrected_once(self) -> None:
        """The gateway's clock runs 600 s ahead: the first request is stale, the router's date
        corrects the client's clock, the new request (a new enc) is answered, and the next
        chat is on time at once."""
        self.gateway.clock_skew = 600
        client = self.client()
        seen: list[dict[str, Any]] = []
        self.assertEqual((await client.chat(HELLO, seen.append)).text, "hello")
        self.assertEqual([c["type"] for c in seen], ["delta", "delta", "done"], "the refusal is not an event")
        self.assertEqual(len(self.gateway.posts), 2)
        first, second = self.opened(0), self.opened(1)
        self.assertNotEqual(first.enc, second.enc)
        self.assertLessEqual(abs(second.timestamp - self.gateway.now()), 2)
        self.assertEqual((await client.chat(HELLO)).text, "hello")
        self.assertEqual(len(self.gateway.posts), 3)


class CommandLine(Equipment):
    """privllm-chat --protocol 2 as a child process: v1's exit codes for the same failures."""

    async def chat(self, *extra: str, pin: bytes | None = None) -> tuple[int, str, str]:
        args = ["-m", "privllm.client", "hi", "--protocol", "2", "--url", self.url, "--ca", self.ca]
        args += ["--pin", b64encode(pin or self.pin), "--device-key", os.path.join(self.dir, "d", "device.key")]
        env = {"PYTHONPATH": ROOT, "PATH": os.environ.get("PATH", "")}
        out, err, code = await getProcessOutputAndValue(sys.executable, [*args, *extra], env=env, reactor=reactor)
        self.assertNotIn(b"Traceback", err)
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    async def test_exit_codes(self) -> None:
        cases: list[tuple[int, Callable[[], None]]] = [
            (4, lambda: setattr(self.gateway, "answer", tampered(events(delta("x")), -1))),
            (5, lambda: setattr(self.gateway, "answer", events(delta("x"), final=None))),
            (6, lambda: setattr(self.gateway, "answer", raw(429, b'{"error":"rate_limited"}'))),
            (0, lambda: setattr(self.gateway, "answer", events(delta("hel"), delta("lo")))),
        ]
        for expected, script in cases:
            script()
            code, out, err = await self.chat()
            self.assertEqual(code, expected, (out, err))
        self.assertEqual(out.strip(), "hello")
        code, _, err = await self.chat(pin=bytes(32))
        self.assertEqual(code, 4, err)
        code, _, err = await self.chat("--protocol", "3")
        self.assertEqual(code, 2, err)
        self.url = "https://127.0.0.1:1"
        self.assertEqual((await self.chat())[0], 3)

    def test_protocol_1_stays_the_default(self) -> None:
        self.assertEqual(parse_args(["hi"]).protocol, 1)
        self.assertEqual(parse_args(["hi", "--protocol", "2"]).protocol, 2)
