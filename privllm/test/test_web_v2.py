"""
Protocol v2's routes over an in-memory transport: every refusal before decryption as v1's
plaintext JSON, the inner 401 stale, the chunked answer, and what each path gives back (the
stream lease, the replay entry, the proof of work) whatever way it ends. Hostile cases first.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from ..config.schema import Privacy
from ..protocol.addresses import AddressPolicy, parse_address
from ..protocol.admission import Admission, PowGate
from ..protocol.device import device_proof
from ..protocol.encoding import b64decode, b64encode
from ..protocol.keyring import KeyRing
from ..protocol.ohttp import bhttp
from ..protocol.ohttp.keyconfig import KeyConfig
from ..protocol.ohttp.message import REQUEST_LABEL, sender_context
from ..protocol.pow import Challenges, DifficultyPolicy, leading_zero_bits, solve, work_hash
from ..protocol.suite import public_of
from ..protocol.v2.admission import AdmissionV2
from ..protocol.v2.keys import GatewayKeys, key_config, sign_key_configs, verify_key_configs
from ..protocol.v2.request import SealedV2, seal_chat_request
from ..protocol.v2.response import ResponseReader
from ..state.gate import AdmissionGate
from ..state.memory import MemoryState
from ..web.app import RouterApp
from ..web.limits import ClientAddress, ConnectionsPerAddress
from ..web.metrics import RouterMetrics
from ..web.request import PrivllmSite
from .fakes import FakeResponse, FakeUpstream
from .helpers import FINISH, NOW, delta, limits, pool_of, ring, stream_settings

LIMIT = 4096
IDENTITY = Ed25519PrivateKey.generate()
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
HEAD = b"POST /api/ohttp HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"


def dechunk(rest: bytes) -> tuple[bytes, bool]:
    """The body of a chunked answer so far, and whether its last chunk has come."""
    data = b""
    while b"\r\n" in rest:
        size_line, tail = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return data, True
        if len(tail) < size + 2:
            break
        data, rest = data + tail[:size], tail[size + 2 :]
    return data, False


class Router(TestCase):
    """One router: v2 on, v1 on unless a test says otherwise, the state in memory."""

    pow_gate: PowGate | None = None
    accept_v1 = True
    device_rate = 1e6
    address_burst = 100
    pad_to = 64

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.ring: KeyRing = ring()
        self.state = MemoryState(
            limits(device_rate=self.device_rate, device_burst=1, address_burst=self.address_burst, address_rate=0.001)
        )
        admission = Admission(self.ring, LIMIT, 60, 5, self.pow_gate)
        self.gateway = GatewayKeys(self.ring)
        gate = AdmissionGate(admission, self.state, AdmissionV2(admission, self.gateway.accepting))
        self.upstream = FakeUpstream()
        self.metrics = RouterMetrics()
        self.pool = pool_of(self.upstream)
        self.policy = AddressPolicy(64, relays=["10.9.0.0/16"])

        def ohttp_keys() -> Any:
            now = int(self.clock.seconds())
            configs = [key_config(k.key_id, k.public_key) for k in self.ring.published(now)]
            return sign_key_configs(configs, now, now + 3600, IDENTITY)

        app = RouterApp(
            clock=self.clock,
            gate=gate,
            keyset=lambda: b'{"v":1}',
            pool=self.pool,
            metrics=self.metrics,
            hsts_max_age=100,
            settings=stream_settings(keepalive=15, idle_timeout=60, privacy=Privacy(pad_to=self.pad_to, coalesce_ms=0)),
            client_address=ClientAddress(self.policy, "X-Forwarded-For"),
            ohttp_keys=ohttp_keys,
            accept_v1=self.accept_v1,
        )
        self.site = PrivllmSite(app.resource(), LIMIT, reactor=self.clock)
        self.device = os.urandom(32)

    # the client's side

    def config(self) -> KeyConfig:
        key = self.ring.published(NOW)[0]
        return key_config(key.key_id, key.public_key)

    def sealed(self, timestamp: int = NOW, config: KeyConfig | None = None) -> SealedV2:
        return seal_chat_request(config or self.config(), self.device, CHAT, timestamp)

    def connect(self, peer: str = "127.0.0.1") -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", peer, 1234))
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 1234))
        protocol.makeConnection(transport)
        return protocol, transport

    def post(
        self, body: bytes, content_type: bytes = b"message/ohttp-req", headers: bytes = b"", peer: str = "127.0.0.1"
    ) -> tuple[Any, StringTransport]:
        protocol, transport = self.connect(peer)
        protocol.dataReceived(HEAD % (content_type, len(body), headers) + body)
        return protocol, transport

    def refusal(self, transport: StringTransport) -> tuple[int, dict[str, Any]]:
        head, rest = transport.value().split(b"\r\n\r\n", 1)
        status = int(head.split(b" ")[1])
        self.assertIn(b"content-type: application/json", head.lower())
        if b"transfer-encoding: chunked" in head.lower():
            rest, _ = dechunk(rest)
        return status, json.loads(rest)

    def answer(self, transport: StringTransport) -> tuple[bytes, bytes, bool]:
        """(head, the body so far, whether it ended)."""
        head, rest = transport.value().split(b"\r\n\r\n", 1)
        body, ended = dechunk(rest)
        return head, body, ended

    # the upstream's side

    def respond(self, *pieces: bytes) -> FakeResponse:
        response = FakeResponse()
        self.upstream.pending.callback(response)
        for piece in pieces:
            response.send(piece)
        return response

    # what the router holds

    def assertReleased(self) -> None:
        self.assertEqual(self.state.slots.active, 0, "the stream lease is given back")
        self.assertEqual(self.state.address_streams.held("127.0.0.1"), 0)

    def entries(self) -> int:
        return self.state.replay.entries(int(self.clock.seconds()))


class Refusals(Router):
    def test_wrong_content_type_is_415_and_touches_nothing(self) -> None:
        for content_type in (b"application/json", b"message/ohttp-res", b"message/bhttp"):
            _, transport = self.post(self.sealed().body, content_type)
            self.assertEqual(self.refusal(transport), (415, {"error": "unsupported_media_type"}))
        self.assertEqual(self.entries(), 0)
        self.assertEqual(self.upstream.requests, [])

    def test_garbage_bodies_are_malformed_or_unknown_key(self) -> None:
        key_id = self.config().key_id
        for body, expected in (
            (b"", "malformed"),
            (b"x" * 10, "malformed"),
            (bytes([key_id]) + b"\x00\x20\x00\x01\x00\x03" + os.urandom(20), "malformed"),  # too short for enc and tag
            (bytes([key_id]) + b"\x00\x21\x00\x01\x00\x03" + os.urandom(100), "unknown_key"),  # another KEM
            (bytes([key_id]) + b"\x00\x20\x00\x01\x00\x09" + os.urandom(100), "unknown_key"),  # an unknown AEAD
        ):
            _, transport = self.post(body)
            status, error = self.refusal(transport)
            self.assertEqual(error, {"error": expected}, body[:8])
            self.assertEqual(status, {"malformed": 400, "unknown_key": 422}[expected])
        _, transport = self.post(bytes([key_id]) + b"\x00\x20\x00\x01\x00\x03" + os.urandom(100))
        self.assertEqual(self.refusal(transport), (400, {"error": "decrypt_failed"}))  # random bytes as enc and ct
        self.assertEqual(self.entries(), 0, "nothing that failed to open is remembered")
        self.assertReleased()

    def test_unknown_key_id(self) -> None:
        config = self.config()
        other = KeyConfig((config.key_id + 7) % 256, config.kem_id, config.public_key, config.suites)
        _, transport = self.post(self.sealed(config=other).body)
        self.assertEqual(self.refusal(transport), (422, {"error": "unknown_key"}))
        self.assertEqual(self.entries(), 0)

    def test_oversize_declared_or_arriving(self) -> None:
        _, transport = self.post(b"x" * (LIMIT + 1))
        self.assertEqual(self.refusal(transport), (413, {"error": "too_large"}))
        self.assertTrue(transport.disconnecting)

    def test_tampered_ciphertext_is_decrypt_failed_and_not_remembered(self) -> None:
        body = self.sealed().body
        _, transport = self.post(body[:-1] + bytes([body[-1] ^ 1]))
        self.assertEqual(self.refusal(transport), (400, {"error": "decrypt_failed"}))
        self.assertEqual(self.entries(), 0)
        _, transport = self.post(body)  # the genuine one still opens: the forgery burnt nothing
        head, _, _ = self.answer(transport)
        self.assertIn(b"content-type: message/ohttp-chunked-res", head.lower())

    def test_forged_device_proof(self) -> None:
        """A proof made for another enc (or by another device key) is refused after decryption,
        as a damaged request: 400 decrypt_failed, nothing remembered, no device counted."""
        config = self.config()
        prefix, context = sender_context(config, config.suites[0], REQUEST_LABEL, None)
        content = {
            "v": 2,
            "timestamp": NOW,
            "device_pubkey": b64encode(public_of(self.device)),
            "proof": b64encode(device_proof(self.device, config.public_key, os.urandom(32), NOW)),
            "chat": CHAT,
        }
        request = bhttp.Request(
            b"POST",
            b"https",
            b"privllm",
            b"/api/chat",
            ((b"content-type", b"application/json"),),
            json.dumps(content).encode(),
        )
        _, transport = self.post(prefix + context.hpke.seal(bhttp.encode_request(request), b""))
        self.assertEqual(self.refusal(transport), (400, {"error": "decrypt_failed"}))
        self.assertEqual(self.entries(), 0)
        self.assertEqual(self.upstream.requests, [])

    def test_replayed_enc_is_409_whatever_the_ciphertext(self) -> None:
        first = self.sealed()
        _, transport = self.post(first.body)
        self.respond(delta("hi"), FINISH).end()
        self.assertTrue(self.answer(transport)[2])
        _, transport = self.post(first.body)
        self.assertEqual(self.refusal(transport), (409, {"error": "replay"}))
        other = self.sealed().body
        spliced = first.body[: 7 + 32] + other[7 + 32 :]  # the seen enc, another ciphertext
        _, transport = self.post(spliced)
        self.assertEqual(self.refusal(transport), (409, {"error": "replay"}))
        self.assertEqual(len(self.upstream.requests), 1)
        self.assertReleased()

    def test_stale_timestamp_is_an_inner_401_with_the_date_and_holds_nothing(self) -> None:
        for timestamp in (NOW - 61, NOW + 6, 0):
            sealed = self.sealed(timestamp)
            entries = self.entries()
            _, transport = self.post(sealed.body)
            head, body, ended = self.answer(transport)
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "))
            self.assertIn(b"content-type: message/ohttp-chunked-res", head.lower())
            self.assertTrue(ended)
            reader = ResponseReader(sealed.context)
            self.assertEqual(reader.feed(body), [])
            (event,) = reader.end()
            self.assertEqual((reader.status, reader.date), (401, NOW))
            self.assertEqual((event["type"], event["code"]), ("error", "stale"))
            self.assertEqual(self.entries(), entries, "not remembered, as v1's stale refusal")
            _, transport = self.post(sealed.body)  # a copy is stale again, and charges nothing
            reader = ResponseReader(sealed.context)
            reader.feed(self.answer(transport)[1])
            self.assertEqual(reader.end()[0]["code"], "stale")
        self.assertEqual(self.upstream.requests, [])
        self.assertReleased()

    def test_backend_not_ready_is_503(self) -> None:
        self.pool.nodes[0].healthy = False
        _, transport = self.post(self.sealed().body)
        self.assertEqual(self.refusal(transport), (503, {"error": "unavailable"}))
        self.assertEqual(self.entries(), 0)

    def test_address_rate_counts_v2_as_v1(self) -> None:
        self.state.per_address = type(self.state.per_address)(0.001, 1, 16)
        _, transport = self.post(self.sealed().body)
        self.respond(FINISH).end()
        _, transport = self.post(self.sealed().body)
        status, error = self.refusal(transport)
        self.assertEqual((status, error["error"]), (429, "rate_limited"))


class Streams(Router):
    def test_deltas_arrive_as_they_come_then_done_and_the_lease_goes_back(self) -> None:
        sealed = self.sealed()
        _, transport = self.post(sealed.body)
        self.assertEqual(self.state.slots.active, 1)
        reader = ResponseReader(sealed.context)
        head, body, _ = self.answer(transport)
        self.assertIn(b"cache-control: no-store", head.lower())
        self.assertIn(b"x-accel-buffering: no", head.lower())
        self.assertEqual(reader.feed(body), [])
        self.assertEqual(reader.status, 200)
        response = self.respond(delta("Hel"))
        seen = len(body)
        _, body, _ = self.answer(transport)
        self.assertEqual(reader.feed(body[seen:]), [{"type": "delta", "text": "Hel"}])
        response.send(delta("lo"))
        seen, (_, body, _) = len(body), self.answer(transport)
        self.assertEqual(reader.feed(body[seen:]), [{"type": "delta", "text": "lo"}])
        self.clock.advance(15)  # quiet: a keep-alive, which opens to no event
        seen, (_, body, _) = len(body), self.answer(transport)
        self.assertGreater(len(body), seen)
        self.assertEqual(reader.feed(body[seen:]), [])
        response.send(FINISH)
        response.end()
        seen, (_, body, ended) = len(body), self.answer(transport)
        self.assertTrue(ended)
        self.assertEqual(reader.feed(body[seen:]), [])
        (done,) = reader.end()
        self.assertEqual(done["type"], "done")
        self.assertReleased()
        self.assertEqual(self.entries(), 2)

    def test_client_gone_mid_stream_gives_everything_back(self) -> None:
        protocol, _ = self.post(self.sealed().body)
        response = self.respond(delta("Hel"))
        self.assertEqual(self.state.slots.active, 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertReleased()
        self.assertEqual(self.entries(), 2)
        self.assertTrue(response.transport.stopped, "the upstream body is dropped")

    def test_device_rate_is_a_sealed_final_error(self) -> None:
        self.state.per_device = type(self.state.per_device)(0.001, 1, 16)
        first = self.sealed()
        self.post(first.body)
        self.respond(FINISH).end()
        sealed = self.sealed()
        _, transport = self.post(sealed.body)
        _, body, ended = self.answer(transport)
        self.assertTrue(ended)
        reader = ResponseReader(sealed.context)
        reader.feed(body)
        (event,) = reader.end()
        self.assertEqual((reader.status, event["code"]), (200, "rate_limited"))
        self.assertIn("retry_after", event)
        self.assertReleased()
        self.assertEqual(len(self.upstream.requests), 1)


class ProofOfWork(Router):
    pow_gate = PowGate(Challenges(os.urandom(32), 120), DifficultyPolicy(1, 1.0, 4, 0, 8), forced=True)

    def challenge(self) -> tuple[bytes, int]:
        _, transport = self.post(self.sealed().body)
        status, body = self.refusal(transport)
        self.assertEqual((status, body["error"]), (429, "pow_required"))
        return b64decode(body["challenge"]), body["difficulty"]

    def header(self, challenge: bytes, nonce: bytes) -> bytes:
        return b"Privllm-Pow: %s.%s\r\n" % (b64encode(challenge).encode(), b64encode(nonce).encode())

    def test_work_is_bound_to_enc_and_spent_once(self) -> None:
        challenge, difficulty = self.challenge()
        sealed = self.sealed()
        # work over anything but this enc does not count: another enc, or the enc's text
        for bound in (os.urandom(32), b64encode(sealed.enc)):
            nonce = next(  # good for `bound`, not by chance for enc as well
                n
                for n in (i.to_bytes(8, "big") for i in range(1 << 20))
                if leading_zero_bits(work_hash(challenge, bound, n)) >= difficulty
                and leading_zero_bits(work_hash(challenge, sealed.enc, n)) < difficulty
            )
            _, transport = self.post(sealed.body, headers=self.header(challenge, nonce))
            self.assertEqual(self.refusal(transport)[1]["error"], "pow_required")
        for header in (b"Privllm-Pow: nodot\r\n", b"Privllm-Pow: a.b\r\n", b"Privllm-Pow: \xff.\xfe\r\n"):
            _, transport = self.post(sealed.body, headers=header)
            self.assertEqual(self.refusal(transport)[1]["error"], "pow_required")
        nonce = solve(challenge, sealed.enc, difficulty)
        _, transport = self.post(sealed.body, headers=self.header(challenge, nonce))
        self.assertTrue(self.answer(transport)[0].startswith(b"HTTP/1.1 200 "))
        self.assertEqual(len(self.state.spent), 1, "spent")
        self.respond(FINISH).end()
        again = self.sealed()
        _, transport = self.post(again.body, headers=self.header(challenge, solve(challenge, again.enc, difficulty)))
        self.assertEqual(self.refusal(transport)[1]["error"], "pow_required", "a challenge admits one request")
        self.assertReleased()


class Relays(Router):
    def test_a_relay_counts_as_itself_and_its_header_is_never_read(self) -> None:
        """From a relay the forwarded-client header is ignored (even a malformed one, which a
        trusted proxy would have 400 for), and the connection cap does not apply."""
        address = ClientAddress(self.policy, "X-Forwarded-For")
        request = DummyRequest([b""])
        request.client = IPv4Address("TCP", "10.9.1.2", 1)
        request.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"not an address"])
        self.assertEqual(address(request), "10.9.1.2")  # type: ignore[arg-type]
        relay, other = parse_address("10.9.1.2"), parse_address("10.8.1.2")
        assert relay is not None and other is not None
        self.assertTrue(self.policy.exempt(relay))
        self.assertFalse(self.policy.trusted(relay))
        self.assertFalse(self.policy.exempt(other))
        cap = ConnectionsPerAddress(self.site, 1, self.policy)
        for _ in range(3):
            self.assertIsNotNone(cap.buildProtocol(IPv4Address("TCP", "10.9.1.2", 1)), "a relay is not capped")
        self.assertIsNotNone(cap.buildProtocol(IPv4Address("TCP", "10.8.1.2", 1)))
        self.assertIsNone(cap.buildProtocol(IPv4Address("TCP", "10.8.1.2", 2)), "anyone else is")


class RelayBudget(Router):
    """A relay carries many clients: it is held to its own (bigger) budget, not a client's."""

    address_burst = 3

    def status(self, transport: StringTransport) -> int:
        return int(transport.value().split(b" ", 2)[1])

    def test_from_a_relay_more_than_a_clients_burst_pass(self) -> None:
        for n in range(self.address_burst + 3):
            self.device = os.urandom(32)
            _, transport = self.post(self.sealed().body, peer="10.9.1.2")
            self.assertEqual(self.status(transport), 200, n)
        self.assertEqual(self.state.address_streams.held("10.9.1.2"), self.address_burst + 3)

    def test_from_a_client_the_burst_then_429(self) -> None:
        for _ in range(self.address_burst):
            self.device = os.urandom(32)
            _, transport = self.post(self.sealed().body, peer="10.8.1.2")
            self.assertEqual(self.status(transport), 200)
        _, transport = self.post(self.sealed().body, peer="10.8.1.2")
        status, error = self.refusal(transport)
        self.assertEqual((status, error["error"]), (429, "rate_limited"))

    def test_v1_from_a_relay_counts_as_the_relays_too(self) -> None:
        """Refused requests count against the address first: a relay's against its budget."""
        v1 = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        for peer, last in (("10.9.1.2", 400), ("10.8.1.2", 429)):
            for _ in range(self.address_burst):
                protocol, transport = self.connect(peer)
                protocol.dataReceived(v1)
                self.assertEqual(self.refusal(transport)[0], 400)
            protocol, transport = self.connect(peer)
            protocol.dataReceived(v1)
            self.assertEqual(self.refusal(transport)[0], last, peer)


class KeysRoute(Router):
    def test_signed_configurations_of_the_published_keys(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /api/ohttp-keys HTTP/1.1\r\nHost: x\r\n\r\n")
        head, rest = transport.value().split(b"\r\n\r\n", 1)
        lines = [line.split(b": ", 1) for line in head.split(b"\r\n")[1:]]
        headers = {name.lower(): value for name, value in lines}
        self.assertEqual(headers[b"content-type"], b"application/ohttp-keys")
        self.assertEqual(headers[b"cache-control"], b"public, max-age=300")
        body = rest if b"content-length" in headers else dechunk(rest)[0]
        pin = IDENTITY.public_key().public_bytes_raw()
        configs = verify_key_configs(body, headers, pin, NOW).configs
        self.assertEqual([c.key_id for c in configs], [k.key_id for k in self.ring.published(NOW)])

    def test_no_current_key_is_503_not_an_empty_list(self) -> None:
        self.clock.advance(3 * 86400)  # the ring was never refreshed: no key is current
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /api/ohttp-keys HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.refusal(transport), (503, {"error": "unavailable"}))
        counted = self.metrics.registry.get_sample_value("privllm_chat_requests_total", {"outcome": "unavailable"})
        self.assertEqual(counted or 0.0, 0.0, "no chat was refused")


class V1Off(Router):
    accept_v1 = False

    def test_v1_routes_answer_404_and_v2_serves(self) -> None:
        for request in (
            b"GET /api/pubkey HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            b"OPTIONS /api/chat HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n"
            b"Access-Control-Request-Method: POST\r\n\r\n",
        ):
            protocol, transport = self.connect()
            protocol.dataReceived(request)
            self.assertEqual(self.refusal(transport), (404, {"error": "not_found"}))
        _, transport = self.post(self.sealed().body)
        self.assertTrue(self.answer(transport)[0].startswith(b"HTTP/1.1 200 "))


class ForwardedHeader(Router):
    def test_a_trusted_proxys_bad_header_is_400_on_both_versions(self) -> None:
        """It raised before the gate and came out as a 500."""
        self.policy.__init__(64, trusted_proxies=["127.0.0.7"], relays=["10.9.0.0/16"])  # type: ignore[misc]
        bad = b"X-Forwarded-For: unknown\r\n"
        _, transport = self.post(self.sealed().body, headers=bad, peer="127.0.0.7")
        self.assertEqual(self.refusal(transport), (400, {"error": "malformed"}))
        protocol, transport = self.connect("127.0.0.7")
        v1 = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        protocol.dataReceived(v1 + bad + b"\r\n{}")
        self.assertEqual(self.refusal(transport), (400, {"error": "malformed"}))
        self.assertEqual(self.flushLoggedErrors(), [])


class LargestPadding(Router):
    """The largest padding the schema allows: a keep-alive or a refusal padded past what one
    chunk holds made the sealer raise, which stopped the chat's ticker and its timeouts."""

    pad_to = 65536

    def test_a_quiet_stream_keeps_its_timeouts_and_its_keepalives_open(self) -> None:
        sealed = self.sealed()
        _, transport = self.post(sealed.body)
        for _ in range(400):  # the upstream never answers
            self.clock.advance(1)
        self.assertEqual(self.flushLoggedErrors(), [])
        _, body, ended = self.answer(transport)
        self.assertTrue(ended, "the first-token timeout ended the stream")
        reader = ResponseReader(sealed.context)
        self.assertEqual(reader.feed(body), [], "keep-alives open, carrying no event")
        self.assertEqual([(e["type"], e["code"]) for e in reader.end()], [("error", "timeout")])
        self.assertReleased()

    def test_a_stale_refusal_is_readable(self) -> None:
        sealed = self.sealed(NOW - 3600)
        _, transport = self.post(sealed.body)
        reader = ResponseReader(sealed.context)
        self.assertEqual(reader.feed(self.answer(transport)[1]), [])
        self.assertEqual(([e["code"] for e in reader.end()], reader.status), (["stale"], 401))
