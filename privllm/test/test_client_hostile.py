"""
privllm-chat against a hostile router: every answer ends with a documented exit code, never a
traceback (README: 0 ok, 2 usage, 3 network, 4 protocol, 5 truncated, 6 server error).

The router here is synthetic test equipment (`HostileRouter`), an HTTPS server on loopback in
this process that answers what each test scripts; its well-formed answers are sealed with
privllm's own protocol code. The client runs as the real command, in a child process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import reactor as _reactor
from twisted.internet import ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ..client import PrivllmClient
from ..keys.files import ensure_private_dir
from ..keys.material import ensure_dev_certificate
from ..protocol.encoding import b64encode, dumps
from ..protocol.envelope import parse_envelope
from ..protocol.keyset import KEYSET_CLOCK_SKEW, keyset_document
from ..protocol.request import open_request
from ..protocol.sse import encode_event
from ..protocol.stream import StreamSealer, derive_stream_keys
from ..protocol.suite import POW_MAX_DIFFICULTY
from .helpers import current_key, ring

reactor: Any = _reactor
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEEP = b"[" * 1100 + b"]" * 1100
DONE = {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
Chat = Callable[["HostileRouter", Request, bytes], bytes | int]


class HostileRouter(Resource):
    """Synthetic test equipment: /api/pubkey and /api/chat answer as the test scripts them."""

    isLeaf = True

    def __init__(self, now: int) -> None:
        super().__init__()
        self.identity = Ed25519PrivateKey.generate()
        self.ring = ring(now)
        self.key = current_key(self.ring, now)
        self.pubkey: list[Callable[[Request], bytes]] = []  # one per fetch; the last repeats
        self.chat: Chat = sealed_answer([{"type": "delta", "text": "hello"}, DONE])
        self.fetches: list[Request] = []

    def keyset(self, issued_at: int | None = None, lifetime: int = 3600) -> bytes:
        now = int(time.time())
        issued = now if issued_at is None else issued_at
        return dumps(keyset_document(self.ring.published(now), issued, issued + lifetime, self.identity))

    def render_GET(self, request: Request) -> bytes:
        self.fetches.append(request)
        if request.path != b"/api/pubkey":
            request.setResponseCode(404)
            return b"{}"
        script = self.pubkey[min(len(self.fetches), len(self.pubkey)) - 1] if self.pubkey else None
        request.setHeader(b"content-type", b"application/json")
        return script(request) if script else self.keyset()

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        return self.chat(self, request, request.content.read())

    def stream_for(self, body: bytes) -> tuple[bytes, StreamSealer]:
        """The init event and the sealer of a well-formed answer to `body`."""
        envelope = parse_envelope(body, max_ciphertext=65536)
        opened = open_request(envelope, self.key.secret)
        nonce = os.urandom(32)
        sealer = StreamSealer(derive_stream_keys(opened.response_secret, envelope.encapsulated_key, nonce))
        return encode_event("init", dumps({"response_nonce": b64encode(nonce)}).decode()), sealer


def sealed_answer(chunks: list[dict[str, Any]], final: bool = True, cut: bool = False) -> Chat:
    """A 200 stream of these chunks (the last sealed as final), or cut off before its end."""

    def answer(router: HostileRouter, request: Request, body: bytes) -> bytes | int:
        init, sealer = router.stream_for(body)
        request.setHeader(b"content-type", b"text/event-stream")
        events = [init] + [
            encode_event("chunk", sealer.seal(c, final=final and i == len(chunks) - 1)) for i, c in enumerate(chunks)
        ]
        if not cut:
            return b"".join(events)
        request.write(b"".join(events))
        reactor.callLater(0.05, request.loseConnection)
        return NOT_DONE_YET

    return answer


def sealed_plaintext(*plaintexts: bytes) -> Chat:
    """A 200 stream whose chunks open to these exact bytes, the last one final."""

    def answer(router: HostileRouter, request: Request, body: bytes) -> bytes:
        init, sealer = router.stream_for(body)
        request.setHeader(b"content-type", b"text/event-stream")
        last = len(plaintexts) - 1
        return init + b"".join(encode_event("chunk", sealer.seal_json(p, i == last)) for i, p in enumerate(plaintexts))

    return answer


def constant(body: bytes) -> Callable[[Request], bytes]:
    return lambda _: body


def raw_answer(status: int, body: bytes, headers: dict[bytes, bytes] | None = None) -> Chat:
    def answer(router: HostileRouter, request: Request, _: bytes) -> bytes:
        request.setResponseCode(status)
        for name, value in (headers or {}).items():
            request.responseHeaders.setRawHeaders(name, [value])
        return body

    return answer


def pow_demand(difficulty: object) -> Chat:
    """429 pow_required (with a challenge the equipment cannot check), then a good answer."""

    def answer(router: HostileRouter, request: Request, body: bytes) -> bytes | int:
        if b'"pow"' in body:
            return sealed_answer([{"type": "delta", "text": "worked"}, DONE])(router, request, body)
        request.setResponseCode(429)
        challenge = {"error": "pow_required", "challenge": b64encode(os.urandom(42)), "difficulty": difficulty}
        return json.dumps(challenge).encode()

    return answer


class Blurt(Factory):
    """Synthetic test equipment: whatever is asked, write these bytes and hang up."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def buildProtocol(self, addr: Any) -> Protocol:
        reply = self.reply

        class Once(Protocol):
            def dataReceived(self, data: bytes) -> None:
                transport: Any = self.transport
                transport.write(reply)
                transport.loseConnection()

        return Once()


class HostileAnswers(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        ensure_private_dir(self.dir)
        cert, key = ensure_dev_certificate(self.dir, ["127.0.0.1"])
        self.ca = cert
        with open(cert, "rb") as c, open(key, "rb") as k:
            self.options = ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()
        self.router = HostileRouter(int(time.time()))
        port = reactor.listenSSL(0, Site(self.router), self.options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"https://127.0.0.1:{port.getHost().port}"

    async def chat(self, *extra: str) -> tuple[int, str, str]:
        """Run privllm-chat; return its exit code, stdout and stderr (which must hold no traceback)."""
        pin = b64encode(self.router.identity.public_key().public_bytes_raw())
        args = ["-m", "privllm.client", "hi", "--url", self.url, "--pin", pin, "--ca", self.ca]
        args += ["--device-key", os.path.join(self.dir, "device", "device.key"), *extra]
        env = {"PYTHONPATH": ROOT, "PATH": os.environ.get("PATH", "")}
        out, err, code = await getProcessOutputAndValue(sys.executable, args, env=env, reactor=reactor)
        self.assertNotIn(b"Traceback", err)
        self.assertNotIn(b"Unhandled", err)
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    async def assert_exit(self, expected: int, *extra: str) -> str:
        code, out, err = await self.chat(*extra)
        self.assertEqual(code, expected, (out, err))
        return err

    async def test_equipment_answers_well_when_asked(self) -> None:
        code, out, err = await self.chat()
        self.assertEqual((code, out.strip()), (0, "hello"), err)

    async def test_hostile_key_sets(self) -> None:
        """Deep, huge, wrongly typed, not UTF-8, badly signed, or too large: exit 4."""
        valid = json.loads(self.router.keyset())
        bad_signature = dict(valid, signature=b64encode(bytes(64)))
        answers = [
            DEEP,
            b'{"v":1' + b"0" * 5000 + b"}",
            b'{"v":1e999}',
            json.dumps(dict(valid, keys="many")).encode(),
            b"\xff\xfe{}",
            json.dumps(bad_signature).encode(),
            b"[" + b" " * (1 << 20) + b"]",
        ]
        for answer in answers:
            self.router.pubkey = [constant(answer)]
            await self.assert_exit(4)

    async def test_stale_key_set_is_fetched_again_past_caches_once(self) -> None:
        old = int(time.time()) - 3600 - KEYSET_CLOCK_SKEW - 5
        self.router.pubkey = [lambda _: self.router.keyset(issued_at=old), lambda _: self.router.keyset()]
        code, out, _ = await self.chat()
        self.assertEqual((code, out.strip()), (0, "hello"))
        self.assertEqual([r.getHeader(b"cache-control") for r in self.router.fetches], [None, b"no-cache"])
        self.router.fetches = []
        self.router.pubkey = [lambda _: self.router.keyset(issued_at=old)]
        self.assertIn("expired", await self.assert_exit(4))
        self.assertEqual(len(self.router.fetches), 2, "fetched once more, not again and again")
        future = int(time.time()) + 600
        self.router.pubkey = [lambda _: self.router.keyset(issued_at=future)]
        self.assertIn("not valid yet", await self.assert_exit(4))

    async def test_a_held_set_is_used_while_fresh_then_fetched_again(self) -> None:
        """The library keeps the set between chats only while the client rule accepts it."""
        with open(self.ca, "rb") as f:
            root = f.read()
        pin = self.router.identity.public_key().public_bytes_raw()
        client = PrivllmClient(reactor, self.url, pin, os.urandom(32), root)
        self.addCleanup(client.close)
        hello = {"messages": [{"role": "user", "content": "hi"}]}
        await client.chat(hello)
        await client.chat(hello)
        self.assertEqual(len(self.router.fetches), 1)
        later = int(time.time()) + 3600 + KEYSET_CLOCK_SKEW
        self.patch(client, "_now", lambda: later)
        self.router.pubkey = [lambda _: self.router.keyset(issued_at=later)]
        self.assertEqual((await client.chat(hello)).text, "hello")
        self.assertEqual(len(self.router.fetches), 2)
        self.assertEqual(self.router.fetches[-1].getHeader(b"cache-control"), None, "a first fetch may use caches")

    async def test_key_set_unavailable(self) -> None:
        def failing(request: Request) -> bytes:
            request.setResponseCode(500)
            return DEEP

        self.router.pubkey = [failing]
        self.assertIn("pubkey_unavailable (HTTP 500)", await self.assert_exit(6))

        def failing_at_length(request: Request) -> bytes:
            request.setResponseCode(503)
            return b"x" * (1 << 20)

        self.router.pubkey = [failing_at_length]
        self.assertIn("pubkey_unavailable (HTTP 503)", await self.assert_exit(6))

    async def test_plaintext_refusals(self) -> None:
        """Refusals with deep JSON, absurd or undecodable headers, escape sequences: exit 6, echoing nothing odd."""
        refusals = [
            raw_answer(429, b'{"error":"rate_limited"}', {b"retry-after": b"9" * 40}),
            raw_answer(429, b'{"error":"rate_limited"}', {b"retry-after": b"\xff\xfe", b"date": b"\xff" * 300}),
            raw_answer(400, DEEP),
            raw_answer(400, b'{"error":"\\u001b[31mred"}'),
            raw_answer(503, b'{"error":' + b"1" * 3000 + b"}"),
        ]
        for refusal in refusals:
            self.router.chat = refusal
            err = await self.assert_exit(6)
            self.assertNotIn("999999", err)
            self.assertNotIn("\x1b", err)
        self.router.chat = raw_answer(409, b"x" * (1 << 20))
        self.assertIn("too large", await self.assert_exit(4))
        self.router.chat = raw_answer(429, b'{"error":"rate_limited"}', {b"retry-after": b"7"})
        self.assertIn("rate_limited (HTTP 429), retry after 7 s", await self.assert_exit(6))

    async def test_proof_of_work_ceiling(self) -> None:
        """Above the client's maximum (default the protocol's ceiling): refused with exit 6.
        Malformed demands: exit 4. A small one is solved."""
        self.router.chat = pow_demand(POW_MAX_DIFFICULTY + 1)
        self.assertIn(f"above this client's maximum of {POW_MAX_DIFFICULTY}", await self.assert_exit(6))
        self.router.chat = pow_demand(10**40)
        await self.assert_exit(6)
        self.router.chat = pow_demand(12)
        self.assertIn("maximum of 10", await self.assert_exit(6, "--max-pow-bits", "10"))
        for difficulty in ("8", True, 1.5, -1, None):
            self.router.chat = pow_demand(difficulty)
            self.assertIn("malformed proof-of-work challenge", await self.assert_exit(4))
        self.router.chat = pow_demand(4)
        code, out, _ = await self.chat()
        self.assertEqual((code, out.strip()), (0, "worked"))
        await self.assert_exit(2, "--max-pow-bits", str(POW_MAX_DIFFICULTY + 1))

    async def test_garbage_streams(self) -> None:
        """Not SSE, bad init, deep or wrongly typed chunk plaintext, lone surrogates: exit 4."""
        answers = [
            raw_answer(200, b"\xff\xfe\n\n" * 10),
            raw_answer(200, b"event: init\ndata: " + DEEP + b"\n\n"),
            raw_answer(200, b'event: init\ndata: {"response_nonce":1e999}\n\n'),
            raw_answer(200, b"event: surprise\ndata: x\n\n"),
            raw_answer(200, b"data: " + b"x" * (2 << 20) + b"\n\n"),
            sealed_plaintext(DEEP),
            sealed_plaintext(b'{"type":"done","finish_reason":"stop","usage":{"prompt_tokens":' + b"9" * 400 + b"}}"),
            sealed_plaintext(b'{"type":"done","finish_reason":"stop","usage":{"prompt_tokens":"many"}}'),
            sealed_plaintext(b'{"type":"done","finish_reason":1,"usage":{}}'),
            sealed_plaintext(b'{"type":"error","code":["x"]}'),
            sealed_plaintext(b'{"type":"delta","text":"\\ud800"}', dumps(DONE)),
            sealed_answer([{"type": "delta", "text": 7}, DONE]),
            sealed_answer([{"type": "delta", "text": "a"}, DONE, DONE], final=False),
        ]
        for answer in answers:
            self.router.chat = answer
            await self.assert_exit(4)

    async def test_truncated_streams(self) -> None:
        """Cut after a delta, or ended without a final chunk: exit 5."""
        self.router.chat = sealed_answer([{"type": "delta", "text": "half"}], final=False, cut=True)
        self.assertIn("final chunk", await self.assert_exit(5))
        self.router.chat = sealed_answer([{"type": "delta", "text": "half"}], final=False)
        await self.assert_exit(5)
        self.router.chat = raw_answer(200, b"")
        await self.assert_exit(5)

    async def test_sealed_errors(self) -> None:
        """A sealed error ends with exit 6; a code that is not code-shaped is not repeated."""
        self.router.chat = sealed_answer([{"type": "error", "code": "overloaded", "message": "busy"}])
        self.assertIn("server error overloaded", await self.assert_exit(6))
        self.router.chat = sealed_answer([{"type": "error", "code": "\x1b]0;owned\x07", "message": ""}])
        err = await self.assert_exit(6)
        self.assertIn("server error unknown", err)
        self.assertNotIn("\x1b", err)

    async def test_local_usage_errors(self) -> None:
        """Bad local input (a CA that is not PEM, an odd URL, an undecodable pin file): exit 2."""
        not_pem = os.path.join(self.dir, "not.pem")
        with open(not_pem, "wb") as f:
            f.write(b"\xff\xfe not a certificate")
        self.ca = not_pem
        self.assertIn("not a PEM certificate", await self.assert_exit(2))
        for url in ("ftp://127.0.0.1", "https://127.0.0.1:99999", "https://\u00e9.example", "https://h/x?y"):
            self.url = url
            self.assertIn("--url", await self.assert_exit(2))
        code, _, _ = await self.chat("--pin", "not base64!")
        self.assertEqual(code, 2)

    async def test_not_http(self) -> None:
        """A TLS server that answers garbage, or closes at once: a network failure, exit 3."""
        for reply in (b"\xff\x00 not HTTP at all\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", b""):
            port = reactor.listenSSL(0, Blurt(reply), self.options, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.url = f"https://127.0.0.1:{port.getHost().port}"
            await self.assert_exit(3)

    async def test_unreachable(self) -> None:
        self.url = "https://127.0.0.1:1"
        await self.assert_exit(3)
