"""Abuse prevention on fake clocks: proof of work, stream caps, per-device limits, slow clients."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from ..protocol.admission import Admission, PowGate
from ..protocol.encoding import b64encode
from ..protocol.errors import POW_REQUIRED, RATE_LIMITED, UNAVAILABLE, RequestRejected
from ..protocol.pow import Challenges, DifficultyPolicy, PowError, RateMeter, leading_zero_bits, solve
from ..protocol.ratelimit import RateLimiter
from ..protocol.replay import ReplayWindow
from ..protocol.slots import StreamSlots
from ..web.limits import ClientAddress, ConnectionsPerAddress
from ..web.request import PrivllmSite
from .helpers import NOW, current_key, ring, sealed_request

SECRET = b"s" * 32


class ProofOfWork(TestCase):
    def test_round_trip(self) -> None:
        challenges = Challenges(SECRET, ttl=60)
        issued = challenges.issue(10, NOW)
        self.assertEqual((issued["error"], issued["difficulty"], issued["expires"]), ("pow_required", 10, NOW + 60))
        raw = base64.b64decode(str(issued["challenge"]))
        nonce = solve(raw, "r" * 22, 10)
        challenges.verify(issued["challenge"], b64encode(nonce), "r" * 22, NOW + 30)
        with self.assertRaises(PowError):  # bound to the request id
            challenges.verify(issued["challenge"], b64encode(nonce), "x" * 22, NOW + 30)
        with self.assertRaises(PowError):  # expired
            challenges.verify(issued["challenge"], b64encode(nonce), "r" * 22, NOW + 61)
        with self.assertRaises(PowError):  # another router secret
            Challenges(b"t" * 32, 60).verify(issued["challenge"], b64encode(nonce), "r" * 22, NOW)

    def test_difficulty_cannot_be_lowered(self) -> None:
        challenges = Challenges(SECRET, ttl=60)
        raw = bytearray(base64.b64decode(str(challenges.issue(20, NOW)["challenge"])))
        raw[1] = 1  # claim difficulty 1
        with self.assertRaises(PowError):
            challenges.verify(b64encode(bytes(raw)), b64encode(b"\0"), "r" * 22, NOW)

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

    def admission(self, **kw: object) -> Admission:
        return Admission(self.ring, ReplayWindow(60, 1000), RateLimiter(1000, 1000, 100), 65536, **kw)  # type: ignore[arg-type]

    def refusal(self, admission: Admission, body: dict, now: float = NOW) -> RequestRejected:
        with self.assertRaises(RequestRejected) as cm:
            admission.admit(json.dumps(body).encode(), "a", now, True)
        return cm.exception

    def test_per_device_limit_after_decryption(self) -> None:
        admission = self.admission(per_device=RateLimiter(0.01, 2, 100))
        device, other = os.urandom(32), os.urandom(32)
        for _ in range(2):
            admission.admit(json.dumps(sealed_request(self.key, device).body).encode(), "a", NOW, True)
        limited = self.refusal(admission, sealed_request(self.key, device).body)
        self.assertEqual(limited.rejection, RATE_LIMITED)
        self.assertGreaterEqual(limited.retry_after or 0, 1)
        admission.admit(json.dumps(sealed_request(self.key, other).body).encode(), "a", NOW, True)
        # Someone copying the device's public key cannot spend its quota: the copy does not open.
        copied = dict(
            sealed_request(self.key, os.urandom(32)).body,
            device_pubkey=sealed_request(self.key, other).body["device_pubkey"],
        )
        self.assertNotEqual(self.refusal(admission, copied).rejection, RATE_LIMITED)
        admission.admit(json.dumps(sealed_request(self.key, other).body).encode(), "a", NOW, True)

    def test_global_cap_before_decryption(self) -> None:
        slots = StreamSlots(max_streams=1, max_per_device=1)
        admission = self.admission(slots=slots)
        self.assertTrue(slots.acquire(b"d"))
        self.assertEqual(self.refusal(admission, sealed_request(self.key).body).rejection, UNAVAILABLE)
        slots.release(b"d")
        admission.admit(json.dumps(sealed_request(self.key).body).encode(), "a", NOW, True)

    def test_pow_required_then_accepted(self) -> None:
        gate = PowGate(Challenges(SECRET, 60), DifficultyPolicy(10, 10, 8, 2, 12), forced=True)
        admission = self.admission(pow_gate=gate)
        sealed = sealed_request(self.key)
        asked = self.refusal(admission, sealed.body)
        self.assertEqual(asked.rejection, POW_REQUIRED)
        assert asked.body is not None
        challenge, difficulty = str(asked.body["challenge"]), asked.body["difficulty"]
        assert isinstance(difficulty, int)
        nonce = solve(base64.b64decode(challenge), sealed.body["request_id"], difficulty)
        body = dict(sealed.body, pow={"challenge": challenge, "nonce": b64encode(nonce)})
        admission.admit(json.dumps(body).encode(), "a", NOW, True)
        self.assertEqual(
            self.refusal(admission, dict(sealed_request(self.key).body, pow=body["pow"])).rejection, POW_REQUIRED
        )

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
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "10.9.9.8", 1)))
        a[0].makeConnection(StringTransport())
        a[0].connectionLost(None)
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "10.9.9.9", 4)))

    def test_client_address_from_trusted_proxy_only(self) -> None:
        address = ClientAddress(["127.0.0.1"], "X-Forwarded-For")
        request: Any = DummyRequest([b""])
        request.client = IPv4Address("TCP", "127.0.0.1", 1)
        request.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"6.6.6.6, 203.0.113.7"])
        self.assertEqual(address(request), "203.0.113.7")
        request.client = IPv4Address("TCP", "198.51.100.1", 1)  # not a proxy we trust: header ignored
        self.assertEqual(address(request), "198.51.100.1")
