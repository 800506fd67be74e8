"""
Abuse prevention on the real stack: floods, per-device limits, proof of work, slowloris.
Different clients are different loopback source addresses (127.0.0.2, ...). The guarded
routers share the real llama-server of the main test router.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import os
import socket
import ssl
import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from privllm.client import PrivllmClient
from privllm.config.schema import Replay
from privllm.test.stack import Daemon, shared

from .docclient import DocClient, b64, open_stream
from .test_e2e import ROUTER, user

_guarded: dict[str, Daemon] = {}


def guarded(name: str, sections: dict) -> Daemon:
    if name not in _guarded:
        router = shared(*ROUTER)
        base = {"llama": {"spawn": False}, "backend": {"urls": [f"unix://{router.llama_socket}"]}}
        daemon = Daemon({**base, **sections}, name=name)
        atexit.register(daemon.cleanup)
        _guarded[name] = daemon.start()
    return _guarded[name]


LIMITED = {
    "rate_limit": {"per_address_rate": 0.02, "per_address_burst": 4, "per_device_rate": 0.02, "per_device_burst": 2},
    "server": {"max_connections_per_address": 8, "request_read_timeout": 2.0},
    "pow": {"enabled": False},
}


class Limits(TestCase):
    timeout = 300

    def client(self, source: str) -> DocClient:
        d = guarded("limited", LIMITED)
        return DocClient(d.port, d.ssl_context(), d.pin(), source=source)

    def test_flood_from_one_address(self) -> None:
        flood = self.client("127.0.0.2")
        codes = []
        for _ in range(8):
            _status, headers, body = flood.post(b"{}")
            codes.append(json.loads(body)["error"])
        self.assertEqual(codes[:4], ["malformed"] * 4)
        self.assertEqual(set(codes[4:]), {"rate_limited"})
        self.assertGreaterEqual(int(headers["Retry-After"]), 1)
        # Meanwhile another address streams as usual.
        self.assertEqual(self.client("127.0.0.1").chat(user("Say hi.", 8))[-1]["type"], "done")

    def test_second_device_unaffected(self) -> None:
        first = self.client("127.0.0.3")
        for _ in range(2):
            self.assertEqual(first.chat(user("Say hi.", 8))[-1]["type"], "done")
        body, enc, secret = first.seal(user("Say hi.", 8))
        status, _headers, raw = first.post(body)
        # The request opened: the refusal is sealed, with its retry time inside...
        self.assertEqual(status, 200)
        [refusal] = open_stream(raw, enc, secret)
        self.assertEqual((refusal["type"], refusal["code"]), ("error", "rate_limited"))
        self.assertGreaterEqual(refusal["retry_after"], 1)
        # ...and it is remembered: nobody can replay it once the device's quota is back.
        self.assertEqual(json.loads(self.client("127.0.0.10").post(body)[2]), {"error": "replay"})
        second = self.client("127.0.0.3")  # another device, same address
        self.assertEqual(second.chat(user("Say hi.", 8))[-1]["type"], "done")

    def test_slowloris_does_not_stop_a_chat(self) -> None:
        d = guarded("limited", LIMITED)
        context = d.ssl_context()
        held: list[ssl.SSLSocket] = []
        refused = 0
        for _ in range(40):
            try:
                raw = socket.create_connection(("127.0.0.1", d.port), timeout=5, source_address=("127.0.0.4", 0))
                conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
                conn.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
                held.append(conn)
            except (OSError, ssl.SSLError):
                refused += 1
        self.addCleanup(lambda: [c.close() for c in held])
        self.assertGreaterEqual(refused, 30, "at most 8 connections per address are taken")
        self.assertEqual(self.client("127.0.0.1").chat(user("Say hi.", 8))[-1]["type"], "done")
        time.sleep(2.5)  # past request_read_timeout
        closed = 0
        for conn in held:
            conn.settimeout(2)
            try:
                if conn.recv(1024) == b"":
                    closed += 1
            except (OSError, ssl.SSLError):
                closed += 1
        self.assertEqual(closed, len(held), "half-sent requests are cut after the read deadline")


SHARE = {"replay": {"max_entries_per_address": 6}, "pow": {"enabled": False}}  # three requests per address


class ReplayShare(TestCase):
    timeout = 300

    def test_one_address_fills_only_its_share(self) -> None:
        d = guarded("share", SHARE)
        flood = DocClient(d.port, d.ssl_context(), d.pin(), source="127.0.0.7")
        # Requests that open (and end at once with a sealed bad_request): each is remembered.
        cheap = {**user("x"), "temperature": 9}
        for _ in range(3):
            body, enc, secret = flood.seal(cheap)
            status, _, raw = flood.post(body)
            self.assertEqual((status, open_stream(raw, enc, secret)[-1]["code"]), (200, "bad_request"))
        body, _, _ = flood.seal(cheap)
        status, headers, raw = flood.post(body)
        self.assertEqual((status, json.loads(raw)), (429, {"error": "rate_limited"}))
        window = Replay()  # the defaults: until its entries have left the window
        self.assertEqual(int(headers["Retry-After"]), window.window + window.future_skew + 1)
        honest = DocClient(d.port, d.ssl_context(), d.pin(), source="127.0.0.8")
        self.assertEqual(honest.chat(user("Say hi.", 8))[-1]["type"], "done")


def solve(challenge: str, request_id: str, difficulty: int) -> str:
    """As docs/protocol.md says: SHA-256(challenge || request_id || nonce) with N leading zero bits."""
    raw = base64.b64decode(challenge)
    for counter in range(1 << 24):
        nonce = counter.to_bytes(8, "big")
        if int.from_bytes(hashlib.sha256(raw + request_id.encode() + nonce).digest(), "big") >> (256 - difficulty) == 0:
            return b64(nonce)
    raise AssertionError("no solution")


class ProofOfWorkUnderStress(TestCase):
    timeout = 300

    def asked(self, doc: DocClient, body: dict) -> dict:
        status, _, raw = doc.post(body)
        challenge = json.loads(raw)
        self.assertEqual((status, challenge["error"]), (429, "pow_required"))
        return {
            "challenge": challenge["challenge"],
            "nonce": solve(challenge["challenge"], body["request_id"], challenge["difficulty"]),
        }

    def test_solution_admits_once_and_only_from_its_address(self) -> None:
        d = guarded("stressed", {"pow": {"forced": True, "base_difficulty": 12}})
        doc = DocClient(d.port, d.ssl_context(), d.pin(), source="127.0.0.5")
        body, enc, secret = doc.seal(user("Say hi.", 8))
        solved = {**body, "pow": self.asked(doc, body)}
        thief = DocClient(d.port, d.ssl_context(), d.pin(), source="127.0.0.6")
        status, _, raw = thief.post(solved)
        self.assertEqual((status, json.loads(raw)["error"]), (429, "pow_required"))  # worthless elsewhere
        status, _, raw = doc.post(solved)  # and not spent by the thief's attempt
        self.assertEqual((status, open_stream(raw, enc, secret)[-1]["type"]), (200, "done"))
        status, _, raw = doc.post(solved)  # sent again: a replay, answered as one (its work is spent last)
        self.assertEqual((status, json.loads(raw)["error"]), (409, "replay"))

    def test_forged_copies_cannot_reuse_a_solution(self) -> None:
        """Forged requests never open, so the replay window never sees them: the spent
        challenge is what stops the second one from costing a decryption."""
        d = guarded("stressed", {"pow": {"forced": True, "base_difficulty": 12}})
        doc = DocClient(d.port, d.ssl_context(), d.pin(), source="127.0.0.9")
        body, _, _ = doc.seal(user("Say hi.", 8))
        forged = {**body, "pow": self.asked(doc, body), "ciphertext": b64(os.urandom(64))}
        status, _, raw = doc.post(forged)
        self.assertEqual((status, json.loads(raw)["error"]), (400, "decrypt_failed"))
        status, _, raw = doc.post(forged)
        self.assertEqual((status, json.loads(raw)["error"]), (429, "pow_required"))

    async def test_client_solves_and_succeeds(self) -> None:
        d = guarded("stressed", {"pow": {"forced": True, "base_difficulty": 12}})
        doc = DocClient(d.port, d.ssl_context(), d.pin())
        body, _, _ = doc.seal(user("Say hi.", 8))
        status, _, raw = doc.post(body)
        asked = json.loads(raw)
        self.assertEqual((status, asked["error"], asked["difficulty"]), (429, "pow_required", 12))
        self.assertGreater(asked["expires"], time.time())
        client = PrivllmClient(reactor, d.url, d.pin(), os.urandom(32), d.cert())
        self.addCleanup(client.close)
        result = await client.chat(user("Say hi.", 8))
        self.assertIn(result.finish_reason, ("stop", "length"))
        self.assertTrue(result.text.strip())
