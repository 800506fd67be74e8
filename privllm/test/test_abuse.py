"""Abuse prevention on fake clocks: proof of work, stream caps, per-device limits, slow clients."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from ..protocol.addresses import AddressPolicy
from ..protocol.admission import Admission, Admitted, Ask, PowGate
from ..protocol.encoding import b64encode
from ..protocol.errors import (
    MALFORMED,
    POW_REQUIRED,
    RATE_LIMITED,
    REFUSAL_REASONS,
    REPLAY,
    UNAVAILABLE,
    RequestRejected,
)
from ..protocol.life import ERROR_CODES
from ..protocol.pow import Challenges, DifficultyPolicy, PowError, RateMeter, leading_zero_bits, solve
from ..protocol.request import SealedRequest
from ..protocol.response import ResponseReader
from ..protocol.slots import StreamSlots
from ..state.gate import AdmissionGate
from ..state.interface import ADDRESS_STREAMS_RETRY, PowSpent
from ..state.memory import MemoryState
from ..web import app as app_module
from ..web.app import RouterApp
from ..web.limits import ClientAddress, ConnectionsPerAddress
from ..web.metrics import RouterMetrics
from ..web.request import PrivllmSite
from .fakes import FakeResponse, FakeUpstream
from .helpers import (
    FINISH,
    NOW,
    current_key,
    delta,
    limits,
    memory_gate,
    pool_of,
    ring,
    sealed_request,
    settled,
    stream_settings,
)

SECRET = b"s" * 32


class ProofOfWork(TestCase):
    def solved(self, challenges: Challenges, address: str = "a", now: float = NOW) -> tuple[object, str]:
        difficulty = 10
        issued = challenges.issue(difficulty, now, address)
        nonce = solve(base64.b64decode(str(issued["challenge"])), "r" * 22, difficulty)
        return issued["challenge"], b64encode(nonce)

    def test_round_trip(self) -> None:
        challenges = Challenges(SECRET, ttl=60)
        issued = challenges.issue(10, NOW, "a")
        self.assertEqual((issued["error"], issued["difficulty"], issued["expires"]), ("pow_required", 10, NOW + 60))
        challenge, nonce = self.solved(challenges)
        with self.assertRaises(PowError):  # bound to the request id
            challenges.verify(challenge, nonce, "x" * 22, NOW + 30, "a")
        with self.assertRaises(PowError):  # expired
            challenges.verify(challenge, nonce, "r" * 22, NOW + 61, "a")
        with self.assertRaises(PowError):  # another router secret
            Challenges(b"t" * 32, 60).verify(challenge, nonce, "r" * 22, NOW, "a")
        challenges.verify(challenge, nonce, "r" * 22, NOW + 30, "a")

    def spend(self, state: MemoryState, token: bytes, expires: int, now: float = NOW) -> None:
        settled(
            state.screen(
                Ask("a", now, request_id="r" * 22, encapsulated_key=token, pow_token=token, pow_expires=expires)
            )
        )

    def test_single_use(self) -> None:
        """Checking a solution is stateless (any router with the secret can); the state spends it once."""
        challenges = Challenges(SECRET, ttl=60)
        challenge, nonce = self.solved(challenges)
        token, expires = challenges.verify(challenge, nonce, "r" * 22, NOW, "a")
        self.assertEqual(challenges.verify(challenge, nonce, "r" * 22, NOW + 1, "a"), (token, expires))
        state = MemoryState(limits())
        self.spend(state, token, expires)
        with self.assertRaises(PowSpent):
            self.spend(state, token, expires, NOW + 1)
        self.assertEqual(len(state.spent), 1)
        fresh, later = challenges.verify(*self.solved(challenges, now=NOW + 61), "r" * 22, NOW + 61, "a")
        self.spend(state, fresh, later, NOW + 61)
        self.assertEqual(len(state.spent), 1)  # the spent one expired with its challenge

    def test_bound_to_the_address(self) -> None:
        challenges = Challenges(SECRET, ttl=60)
        challenge, nonce = self.solved(challenges, "192.0.2.1")
        with self.assertRaises(PowError):
            challenges.verify(challenge, nonce, "r" * 22, NOW, "192.0.2.2")
        challenges.verify(challenge, nonce, "r" * 22, NOW, "192.0.2.1")

    def test_spent_set_full_fails_closed(self) -> None:
        challenges = Challenges(SECRET, ttl=60)
        state = MemoryState(limits(pow_max_spent=2))
        for _ in range(2):
            self.spend(state, *challenges.verify(*self.solved(challenges), "r" * 22, NOW, "a"))
        with self.assertRaises(RequestRejected) as cm:
            self.spend(state, *challenges.verify(*self.solved(challenges), "r" * 22, NOW, "a"))
        self.assertEqual(cm.exception.rejection, UNAVAILABLE)
        later = challenges.verify(*self.solved(challenges, now=NOW + 61), "r" * 22, NOW + 61, "a")
        self.spend(state, *later, now=NOW + 61)

    def test_difficulty_cannot_be_lowered(self) -> None:
        challenges = Challenges(SECRET, ttl=60)
        raw = bytearray(base64.b64decode(str(challenges.issue(20, NOW, "a")["challenge"])))
        raw[1] = 1  # claim difficulty 1
        with self.assertRaises(PowError):
            challenges.verify(b64encode(bytes(raw)), b64encode(b"\0"), "r" * 22, NOW, "a")

    def test_a_challenge_from_a_quieter_time_is_good_one_step_lower_only(self) -> None:
        challenges = Challenges(SECRET, ttl=60)
        challenge, nonce = self.solved(challenges)  # 10 bits
        with self.assertRaises(PowError):
            challenges.verify(challenge, nonce, "r" * 22, NOW, "a", minimum=11)
        challenges.verify(challenge, nonce, "r" * 22, NOW, "a", minimum=10)

    def test_leading_zero_bits(self) -> None:
        self.assertEqual(leading_zero_bits(b"\x00\x00\x80"), 16)
        self.assertEqual(leading_zero_bits(b"\x00\x01"), 15)
        self.assertEqual(leading_zero_bits(b"\xff"), 0)

    def test_difficulty_curve(self) -> None:
        policy = DifficultyPolicy(stream_threshold=100, rate_threshold=50, base=16, step=2, maximum=24)
        self.assertEqual(policy.difficulty(99, 49), 0)
        self.assertEqual(policy.difficulty(100, 0), 16)
        self.assertEqual(policy.difficulty(0, 100), 18)  # twice the rate threshold
        self.assertEqual(policy.difficulty(400, 0), 20)  # four times: two doublings
        self.assertEqual(policy.difficulty(10**9, 0), 24)  # capped
        self.assertEqual(policy.difficulty(0, 0, forced=True), 16)
        rising = [policy.difficulty(n, 0) for n in range(100, 2000, 50)]
        self.assertEqual(rising, sorted(rising))

    def test_rate_meter(self) -> None:
        clock = Clock()
        meter = RateMeter(window=10)
        for _ in range(100):
            meter.add(clock.seconds())
            clock.advance(0.1)
        self.assertAlmostEqual(meter.rate(clock.seconds()), 10.0, delta=1.0)
        clock.advance(11)
        self.assertEqual(meter.rate(clock.seconds()), 0.0)


class Admitting(TestCase):
    def setUp(self) -> None:
        self.ring = ring()
        self.key = current_key(self.ring)

    def admission(self, pow_gate: PowGate | None = None, **overrides: Any) -> AdmissionGate:
        return memory_gate(self.ring, pow_gate=pow_gate, address_rate=1000, address_burst=1000, **overrides)

    def state(self, admission: AdmissionGate) -> MemoryState:
        assert isinstance(admission.state, MemoryState)
        return admission.state

    def refusal(self, admission: AdmissionGate, body: dict, now: float = NOW, address: str = "a") -> RequestRejected:
        with self.assertRaises(RequestRejected) as cm:
            settled(admission.admit(json.dumps(body).encode(), address, now, True))
        return cm.exception

    def admit(self, admission: AdmissionGate, body: dict, address: str = "a", now: float = NOW) -> Admitted:
        return settled(admission.admit(json.dumps(body).encode(), address, now, True))

    def test_per_device_limit_after_decryption_is_sealed_and_remembered(self) -> None:
        admission = self.admission(device_rate=0.01, device_burst=2, max_streams_per_address=10)
        device, other = os.urandom(32), os.urandom(32)
        for _ in range(2):
            self.assertIsNone(self.admit(admission, sealed_request(self.key, device).body).refusal)
        limited = sealed_request(self.key, device).body
        refused = self.admit(admission, limited)
        assert refused.refusal is not None
        self.assertEqual((refused.refusal.code, refused.refusal.retry_after), ("rate_limited", 100))
        self.assertIn(refused.refusal.code, ERROR_CODES)
        self.assertEqual(self.state(admission).address_streams.held("a"), 2)
        admission.release(refused)  # nothing was taken: nothing given back
        self.assertEqual(self.state(admission).address_streams.held("a"), 2)
        self.assertEqual(self.refusal(admission, limited).rejection, REPLAY)  # remembered: no replay later
        self.assertIsNone(self.admit(admission, sealed_request(self.key, other).body).refusal)
        # Someone copying the device's public key cannot spend its quota: the copy does not open.
        copied = dict(
            sealed_request(self.key, os.urandom(32)).body,
            device_pubkey=sealed_request(self.key, other).body["device_pubkey"],
        )
        self.assertNotEqual(self.refusal(admission, copied).rejection, RATE_LIMITED)
        self.assertIsNone(self.admit(admission, sealed_request(self.key, other).body).refusal)

    def test_streams_per_device_sealed_overloaded(self) -> None:
        """The per-device cap is counted once the device key is proven, so its refusal is sealed;
        a refused request holds nothing, and a released stream makes room."""
        admission = self.admission(max_streams_per_device=1)
        device = os.urandom(32)
        held = self.admit(admission, sealed_request(self.key, device).body)
        refused = self.admit(admission, sealed_request(self.key, device).body)
        assert refused.refusal is not None
        self.assertEqual((refused.refusal.code, refused.lease), ("overloaded", None))
        self.assertIn(refused.refusal.code, ERROR_CODES)
        state = self.state(admission)
        self.assertEqual((state.slots.active, state.address_streams.held("a")), (1, 1))
        self.assertIsNone(self.admit(admission, sealed_request(self.key).body).refusal)  # another device
        admission.release(held)
        self.assertIsNone(self.admit(admission, sealed_request(self.key, device).body).refusal)

    def test_concurrent_streams_per_address(self) -> None:
        admission = self.admission(max_streams_per_address=2)
        held = [self.admit(admission, sealed_request(self.key).body) for _ in range(2)]
        refused = self.refusal(admission, sealed_request(self.key).body)
        self.assertEqual((refused.rejection, refused.retry_after), (RATE_LIMITED, ADDRESS_STREAMS_RETRY))
        self.admit(admission, sealed_request(self.key).body, address="b")  # another address goes on
        admission.release(held[0])
        self.admit(admission, sealed_request(self.key).body)

    def test_replay_share_refused_before_decryption(self) -> None:
        admission = self.admission(replay_max_per_address=4)
        for _ in range(2):
            self.admit(admission, sealed_request(self.key).body, address="flood")
        forged = dict(sealed_request(self.key).body, ciphertext=b64encode(os.urandom(40)))
        self.assertEqual(self.refusal(admission, forged, address="flood").rejection, RATE_LIMITED)  # not opened
        self.admit(admission, sealed_request(self.key).body, address="other")
        replay = self.state(admission).replay
        self.assertEqual((len(replay), replay.owned("flood")), (6, 4))

    def test_global_cap_before_decryption(self) -> None:
        admission = self.admission(max_streams=1, max_streams_per_device=1)
        slots = self.state(admission).slots
        self.assertTrue(slots.acquire(b"d"))
        self.assertEqual(self.refusal(admission, sealed_request(self.key).body).rejection, UNAVAILABLE)
        slots.release(b"d")
        self.admit(admission, sealed_request(self.key).body)

    def pow_admission(self) -> AdmissionGate:
        gate = PowGate(Challenges(SECRET, 60), DifficultyPolicy(10, 10, 8, 2, 12), forced=True)
        return self.admission(pow_gate=gate)

    def solved(self, admission: AdmissionGate, address: str = "a") -> dict:
        sealed = sealed_request(self.key)
        asked = self.refusal(admission, sealed.body, address=address)
        self.assertEqual(asked.rejection, POW_REQUIRED)
        assert asked.body is not None
        challenge, difficulty = str(asked.body["challenge"]), asked.body["difficulty"]
        assert isinstance(difficulty, int)
        nonce = solve(base64.b64decode(challenge), sealed.body["request_id"], difficulty)
        return dict(sealed.body, pow={"challenge": challenge, "nonce": b64encode(nonce)})

    def test_requests_refused_by_their_address_limit_are_not_load(self) -> None:
        """One address sending junk it is refused for must not make everyone solve puzzles."""
        gate = PowGate(Challenges(SECRET, 120), DifficultyPolicy(192, 50.0, 16, 2, 24))
        admission = memory_gate(self.ring, pow_gate=gate, address_rate=2, address_burst=20)
        for i in range(8000):  # 800 a second for 10 s
            with self.assertRaises(RequestRejected):
                settled(admission.admit(b"x", "198.51.100.1", NOW + i / 800, True))
        honest = sealed_request(self.key, timestamp=NOW + 10)
        self.admit(admission, honest.body, "203.0.113.9", NOW + 10)

    def test_pow_required_then_accepted(self) -> None:
        admission = self.pow_admission()
        self.admit(admission, self.solved(admission))

    def test_pow_solution_reused_by_a_forged_request(self) -> None:
        """The solution is spent when it verifies: a forged request carrying it (which never
        opens, so the replay window never sees it) burns it, and nothing else gets in with it."""
        admission = self.pow_admission()
        body = self.solved(admission)
        forged = dict(body, ciphertext=b64encode(os.urandom(40)))
        self.assertNotEqual(self.refusal(admission, forged).rejection, POW_REQUIRED)
        for _ in range(3):
            self.assertEqual(self.refusal(admission, forged).rejection, POW_REQUIRED)
        self.assertEqual(self.refusal(admission, body).rejection, POW_REQUIRED)
        other = dict(sealed_request(self.key).body, pow=body["pow"])
        self.assertEqual(self.refusal(admission, other).rejection, POW_REQUIRED)

    def test_replay_with_its_proof_of_work_is_a_replay(self) -> None:
        """The work is spent last: a captured request sent again is answered as a replay, and a
        request refused before the spend (here: no room in its address's share) keeps its work."""
        admission = memory_gate(
            self.ring,
            pow_gate=PowGate(Challenges(SECRET, 60), DifficultyPolicy(10, 10, 8, 2, 12), forced=True),
            address_rate=1000,
            address_burst=1000,
            replay_max_per_address=2,
        )
        body = self.solved(admission)
        self.admit(admission, body)
        self.assertEqual(self.refusal(admission, body).rejection, REPLAY)
        self.assertEqual(len(self.state(admission).spent), 1)
        kept = self.solved(admission)
        self.assertEqual(self.refusal(admission, kept).rejection, RATE_LIMITED)  # the share is full
        self.assertEqual(len(self.state(admission).spent), 1)  # its work was not spent

    def test_pow_solution_from_another_address(self) -> None:
        admission = self.pow_admission()
        body = self.solved(admission, address="192.0.2.1")
        self.assertEqual(self.refusal(admission, body, address="192.0.2.2").rejection, POW_REQUIRED)
        self.admit(admission, body, address="192.0.2.1")

    def test_slots_per_device(self) -> None:
        slots = StreamSlots(max_streams=10, max_per_device=2)
        self.assertTrue(slots.acquire(b"a") and slots.acquire(b"a"))
        self.assertFalse(slots.acquire(b"a"))
        self.assertTrue(slots.acquire(b"b"))
        slots.release(b"a")
        self.assertTrue(slots.acquire(b"a"))
        for device in (b"a", b"a", b"b"):
            slots.release(device)
        self.assertEqual(slots.active, 0)


class SealedAfterDecryption(TestCase):
    """Through the HTTP layer: a refusal after decryption is the stream's sealed final chunk,
    and every stream an address holds is given back however the stream ends."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.ring = ring()
        self.key = current_key(self.ring)
        self.upstream = FakeUpstream()
        self.state = MemoryState(
            limits(
                address_rate=1000,
                address_burst=1000,
                device_rate=0.01,
                device_burst=1,
                max_streams=10,
                max_streams_per_device=10,
                max_streams_per_address=10,
            )
        )
        self.slots = self.state.slots
        self.metrics = RouterMetrics()
        app = RouterApp(
            clock=self.clock,
            gate=AdmissionGate(Admission(self.ring, 65536, 60, 5), self.state),
            keyset=lambda: b"{}",
            pool=pool_of(self.upstream),
            metrics=self.metrics,
            hsts_max_age=100,
            settings=stream_settings(keepalive=15, idle_timeout=60),
        )
        self.site = PrivllmSite(app.resource(), 65536, reactor=self.clock)

    def counted(self, name: str, label: str, value: str) -> float:
        return self.metrics.registry.get_sample_value(name, {label: value}) or 0.0

    def post(self, sealed: SealedRequest) -> tuple[Any, StringTransport]:
        body = json.dumps(sealed.body).encode()
        peer = IPv4Address("TCP", "192.0.2.7", 1234)
        protocol = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        return protocol, transport

    def chunks(self, sealed: SealedRequest, reply: bytes) -> list[dict[str, Any]]:
        head, rest = reply.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "))
        data = b""
        while rest:
            size, rest = rest.split(b"\r\n", 1)
            data, rest = data + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
        return ResponseReader(sealed).feed(data)

    def test_per_device_429_is_sealed(self) -> None:
        device = os.urandom(32)
        first, _ = self.post(sealed_request(self.key, device))
        self.assertEqual((self.slots.active, self.state.address_streams.held("192.0.2.7")), (1, 1))
        second = sealed_request(self.key, device)
        _, transport = self.post(second)
        chunks = self.chunks(second, transport.value())
        wait = self.state.per_device.check(base64.b64decode(second.body["device_pubkey"]), self.clock.seconds())
        self.assertEqual(
            chunks,
            [
                {
                    "type": "error",
                    "code": "rate_limited",
                    "message": "too many requests from this device",
                    "retry_after": wait,
                }
            ],
        )
        self.assertNotIn(b"429", transport.value().split(b"\r\n", 1)[0])
        self.assertEqual((self.slots.active, self.state.address_streams.held("192.0.2.7")), (1, 1))
        first.connectionLost(Failure(ConnectionDone()))  # the client of the first stream goes away
        self.assertEqual((self.slots.active, len(self.state.address_streams)), (0, 0))

    def test_refusals_are_counted_by_reason_bad_requests_by_outcome_only(self) -> None:
        sealed = sealed_request(self.key)
        self.post(sealed)
        _, transport = self.post(sealed)  # the same request again
        self.assertIn(b" 409 ", transport.value().split(b"\r\n", 1)[0])
        self.post(sealed_request(self.key, os.urandom(32), timestamp=NOW - 3600))  # stale: no control refused it
        self.assertEqual(self.counted("privllm_refusals_total", "reason", "replay"), 1)
        self.assertEqual(self.counted("privllm_chat_requests_total", "outcome", "replay"), 1)
        self.assertEqual(self.counted("privllm_chat_requests_total", "outcome", "stale"), 1)
        samples = [s for m in self.metrics.registry.collect() for s in m.samples]
        refusals = [s for s in samples if s.name == "privllm_refusals_total"]
        self.assertEqual({s.labels["reason"] for s in refusals}, REFUSAL_REASONS, "every reason shown, from 0")
        self.assertEqual([s.labels for s in refusals if s.value], [{"reason": "replay"}])
        device = os.urandom(32)
        self.post(sealed_request(self.key, device))
        self.post(sealed_request(self.key, device))
        self.assertEqual(self.counted("privllm_refusals_total", "reason", "device_rate"), 1)

    def test_lease_given_back_when_the_stream_cannot_even_be_built(self) -> None:
        def broken(*args: object, **kw: object) -> None:
            raise RuntimeError("a bug")

        self.patch(app_module, "ChatStream", broken)
        self.post(sealed_request(self.key))
        self.assertEqual((self.slots.active, len(self.state.address_streams)), (0, 0))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_address_stream_given_back_when_done(self) -> None:
        sealed = sealed_request(self.key)
        _, transport = self.post(sealed)
        self.assertEqual(len(self.state.address_streams), 1)
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("hi") + FINISH)
        response.end()
        self.assertEqual(self.chunks(sealed, transport.value())[-1]["type"], "done")
        self.assertEqual((self.slots.active, len(self.state.address_streams)), (0, 0))


class SlowClients(TestCase):
    def site(self, clock: Clock) -> PrivllmSite:
        return PrivllmSite(Resource(), 4096, reactor=clock, idle_timeout=30, request_read_timeout=5)

    def test_request_must_arrive_in_time(self) -> None:
        clock = Clock()
        protocol = self.site(clock).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")
        for _ in range(4):  # a trickle of header bytes keeps the idle timer alive...
            clock.advance(1)
            protocol.dataReceived(b"X-A: b\r\n")
        self.assertFalse(transport.disconnecting)
        clock.advance(1.1)  # ...but not the read deadline
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_connections_per_address(self) -> None:
        factory = ConnectionsPerAddress(self.site(Clock()), limit=2)
        a = [factory.buildProtocol(IPv4Address("TCP", "10.9.9.9", p)) for p in range(3)]
        self.assertIsNotNone(a[0])
        self.assertIsNotNone(a[1])
        self.assertIsNone(a[2])
        self.assertIsNone(factory.buildProtocol(IPv6Address("TCP", "::ffff:10.9.9.9", 1)))  # the same client
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "10.9.9.8", 1)))
        a[0].makeConnection(StringTransport())
        a[0].connectionLost(None)
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "10.9.9.9", 4)))

    def test_connections_per_ipv6_prefix(self) -> None:
        factory = ConnectionsPerAddress(self.site(Clock()), limit=2, policy=AddressPolicy(ipv6_prefix=64))
        for host in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"):
            self.assertIsNotNone(factory.buildProtocol(IPv6Address("TCP", host, 1)))
        self.assertIsNone(factory.buildProtocol(IPv6Address("TCP", "2001:db8:1:2::3", 1)))  # same /64
        self.assertIsNotNone(factory.buildProtocol(IPv6Address("TCP", "2001:db8:1:3::1", 1)))
        self.assertIsNotNone(factory.buildProtocol(IPv6Address("TCP", "fe80::1%lo", 1)))
        self.assertEqual(factory.open, {"2001:db8:1:2::/64": 2, "2001:db8:1:3::/64": 1, "fe80::/64": 1})

    def test_trusted_proxy_not_counted_by_connections(self) -> None:
        factory = ConnectionsPerAddress(
            self.site(Clock()), limit=1, policy=AddressPolicy(64, trusted_proxies=["10.0.0.0/8"])
        )
        protocols = [factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", p)) for p in range(5)]
        self.assertNotIn(None, protocols)
        self.assertEqual(factory.open, {})
        for protocol in protocols:
            protocol.makeConnection(StringTransport())
            protocol.connectionLost(None)
        self.assertEqual(factory.open, {})

    def request(self, peer: Any, forwarded: list[bytes] | None = None) -> Any:
        request: Any = DummyRequest([b""])
        request.client = peer
        if forwarded is not None:
            request.requestHeaders.setRawHeaders(b"x-forwarded-for", forwarded)
        return request

    def test_client_address_from_trusted_proxy_only(self) -> None:
        address = ClientAddress(
            AddressPolicy(64, trusted_proxies=["127.0.0.1", "::ffff:10.0.0.0/104"]), "X-Forwarded-For"
        )
        proxy = IPv4Address("TCP", "127.0.0.1", 1)
        self.assertEqual(address(self.request(proxy, [b"6.6.6.6, 203.0.113.7"])), "203.0.113.7")
        self.assertEqual(address(self.request(proxy, [b"x", b"::ffff:203.0.113.7"])), "203.0.113.7")
        self.assertEqual(address(self.request(proxy, [b"2001:db8:5:6::7"])), "2001:db8:5:6::/64")
        self.assertEqual(address(self.request(IPv4Address("TCP", "10.2.3.4", 1), [b"203.0.113.9"])), "203.0.113.9")
        self.assertEqual(address(self.request(proxy)), "127.0.0.1")  # the proxy's own request
        # not a proxy we trust: header ignored
        self.assertEqual(address(self.request(IPv4Address("TCP", "198.51.100.1", 1), [b"1.2.3.4"])), "198.51.100.1")
        self.assertEqual(address(self.request(IPv6Address("TCP", "2001:db8::1", 1), [b"1.2.3.4"])), "2001:db8::/64")

    def test_forwarded_value_must_be_an_address(self) -> None:
        address = ClientAddress(AddressPolicy(64, trusted_proxies=["127.0.0.1"]), "X-Forwarded-For")
        proxy = IPv4Address("TCP", "127.0.0.1", 1)
        for value in (
            b"",
            b"unknown",
            b"203.0.113.7:443",
            b"[2001:db8::1]",
            b"fe80::1%eth0",
            b"1.2.3.4 x",
            b"\xff" * 8,
        ):
            with self.assertRaises(RequestRejected) as cm:
                address(self.request(proxy, [value]))
            self.assertEqual(cm.exception.rejection, MALFORMED)
