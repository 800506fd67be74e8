"""
Protocol v2 through a standard reverse proxy acting as an Oblivious HTTP relay (Debian's nginx,
tests/relay.py): clients reach the real router (real llama-server) only through the relay,
which forwards the encapsulated body and strips everything that names them.

Checked: the answer streams through the relay chunk by chunk; nothing the router keeps (its
log, its metrics, the files it wrote) holds a client's address; abuse controls apply per
relay (two clients behind one relay share the relay's own budget) and by proof of work.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import struct
import tempfile
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from twisted.trial.unittest import TestCase

from privllm.keys.pki import CA_CERT, create_ca, issue
from privllm.protocol.ohttp.keyconfig import KeyConfig, parse_key_configs
from privllm.protocol.v2.request import SealedV2, seal_chat_request
from privllm.protocol.v2.response import ResponseReader
from privllm.test.redis_server import RedisServer, available
from privllm.test.relay import Relay
from privllm.test.stack import Daemon, shared

from .test_e2e import ROUTER, user

RELAY_SOURCE = "127.0.0.5"  # the relay's connections to the router come from here
CLIENTS = ("127.0.0.9", "127.0.0.10")  # the clients' own addresses, which the router must never learn
KEYS_LABEL = b"privllm/v2 ohttp-keys\x00"


class RelayClient:
    """A v2 client that reaches the router only through the relay, from one loopback address."""

    def __init__(self, relay: Relay, ca: str, pin: bytes, source: str) -> None:
        self.relay, self.pin, self.source = relay, pin, source
        self.context = ssl.create_default_context(cafile=ca)
        self.device = os.urandom(32)

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.relay.port, context=self.context, timeout=60, source_address=(self.source, 0)
        )

    def key_config(self) -> KeyConfig:
        """The router's configurations through the relay, checked against the pinned identity."""
        conn = self.connection()
        conn.request("GET", "/api/ohttp-keys")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        signing = base64.b64decode(response.getheader("privllm-keys-signing-key", ""))
        assert signing == self.pin, "signed by the pinned identity"
        issued, expires = (
            int(response.getheader("privllm-keys-issued", "")),
            int(response.getheader("privllm-keys-expires", "")),
        )
        signature = base64.b64decode(response.getheader("privllm-keys-signature", ""))
        Ed25519PublicKey.from_public_bytes(signing).verify(
            signature, KEYS_LABEL + struct.pack(">QQ", issued, expires) + body
        )
        return parse_key_configs(body)[0]

    def seal(self, chat: dict[str, Any]) -> SealedV2:
        return seal_chat_request(self.key_config(), self.device, chat, int(time.time()))

    def post(self, body: bytes, pow_header: str | None = None) -> http.client.HTTPResponse:
        conn = self.connection()
        headers = {"content-type": "message/ohttp-req"}
        if pow_header:
            headers["privllm-pow"] = pow_header
        conn.request("POST", "/api/ohttp", body=body, headers=headers)
        return conn.getresponse()

    def read(self, sealed: SealedV2, response: http.client.HTTPResponse) -> list[tuple[float, dict[str, Any]]]:
        """Each event with the time its bytes arrived, read as the relay passes them on."""
        assert response.status == 200, (response.status, response.read())
        reader = ResponseReader(sealed.context)
        events: list[tuple[float, dict[str, Any]]] = []
        while data := response.read1(65536):
            events += [(time.monotonic(), e) for e in reader.feed(data)]
        events += [(time.monotonic(), e) for e in reader.end()]
        return events


def solve(challenge: bytes, enc: bytes, difficulty: int) -> bytes:
    """docs/protocol.md v2: SHA-256(challenge || enc || nonce) with `difficulty` leading zero bits."""
    for counter in range(1 << 26):
        nonce = counter.to_bytes(8, "big")
        digest = int.from_bytes(hashlib.sha256(challenge + enc + nonce).digest(), "big")
        if digest >> (256 - difficulty) == 0:
            return nonce
    raise AssertionError("no nonce found")


_stack: dict[str, Any] = {}


def behind_relay(name: str, sections: dict[str, dict[str, Any]]) -> tuple[Daemon, Relay, str]:
    """A router on the shared llama-server, reachable by clients only through its own relay."""
    if name not in _stack:
        llama = shared(*ROUTER).llama_socket
        config = {
            "llama": {"spawn": False},
            "backend": {"urls": [f"unix://{llama}"]},
            "ohttp": {"relays": [RELAY_SOURCE]},
            **sections,
        }
        daemon = Daemon(config, name=f"relay-{name}")
        atexit.register(daemon.cleanup)
        daemon.start()
        pki = tempfile.mkdtemp(prefix="privllm-relay-pki-")
        atexit.register(shutil.rmtree, pki, True)
        create_ca(os.path.join(pki, "ca"))
        cert, key = issue(os.path.join(pki, "ca"), "relay", os.path.join(pki, "certs"), ips=["127.0.0.1"])
        relay = Relay(daemon.port, daemon.ca_file, cert, key, RELAY_SOURCE).start()
        _stack[name] = (daemon, relay, os.path.join(pki, "ca", CA_CERT))
    return _stack[name]


def everything_kept(daemon: Daemon) -> str:
    """The router's log, its metrics, and every file it wrote (state and temporary directories)."""
    kept = [daemon.log(), daemon.get("/metrics", tls=False)[2].decode(errors="replace")]
    for root in (daemon.state_dir, daemon.tmp_dir):
        for directory, _, files in os.walk(root):
            for name in files:
                path = os.path.join(directory, name)
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        kept.append(f.read().decode("latin-1"))
    return "\n".join(kept)


class ThroughARelay(TestCase):
    timeout = 300

    def test_an_answer_streams_through_the_relay_and_no_client_address_is_kept(self) -> None:
        daemon, relay, ca = behind_relay("plain", {"privacy": {"coalesce_ms": 0}})
        client = RelayClient(relay, ca, daemon.pin(), CLIENTS[0])
        sealed = client.seal(user("Count from one to twenty, in words.", 48))
        events = client.read(sealed, client.post(sealed.body))
        kinds = [e["type"] for _, e in events]
        self.assertEqual(kinds[-1], "done", kinds)
        deltas = [at for at, e in events if e["type"] == "delta"]
        self.assertGreater(len(deltas), 2, "the answer came in pieces")
        self.assertGreater(events[-1][0] - deltas[0], 0.05, "the first delta arrived before the answer ended")
        # the same encapsulated request again, through the relay: the router has it in its window
        replayed = client.post(sealed.body)
        self.assertEqual((replayed.status, json.loads(replayed.read())), (409, {"error": "replay"}))
        time.sleep(0.3)
        kept = everything_kept(daemon)
        for address in CLIENTS:
            self.assertNotIn(address, kept)

    def test_the_shared_state_holds_no_client_address(self) -> None:
        """With the admission state in a real redis-server (what many routers share): after
        chats and refusals from two clients through the relay, nothing in Redis, keys or values,
        holds either client's address, as text or as its four bytes."""
        if not available():
            raise AssertionError("redis-server is missing: run scripts/bootstrap.sh")
        redis = RedisServer(password=secrets.token_hex(16))
        self.addCleanup(redis.close)
        started = time.monotonic()
        daemon, relay, ca = behind_relay("redis", {"state": redis.state_section()})
        time.sleep(max(0.0, started + 7 - time.monotonic()))  # past a fresh Redis's floor (future skew 5 s)
        for source in CLIENTS:
            client = RelayClient(relay, ca, daemon.pin(), source)
            sealed = client.seal(user("Say hi.", 8))
            self.assertEqual(client.read(sealed, client.post(sealed.body))[-1][1]["type"], "done")
            self.assertEqual(client.post(sealed.body).status, 409)  # remembered in Redis
            self.assertEqual(client.post(b"\x00" * 10).status, 400)  # malformed, counted in Redis
        kept = redis.dump()
        self.assertIn(b"privllm:", kept, "the dump holds the router's state")
        for address in CLIENTS:
            self.assertNotIn(address.encode(), kept)
            self.assertNotIn(socket.inet_aton(address), kept)
        everything = everything_kept(daemon)
        for address in CLIENTS:
            self.assertNotIn(address, everything)

    def test_abuse_controls_count_the_relay_not_its_clients(self) -> None:
        """Two clients behind one relay share the relay's request budget (ohttp.relay_*, not a
        single client's rate_limit.per_address_*, set lower here): garbage from one spends it
        for both (the router cannot tell them apart, by design)."""
        limits = {
            "ohttp": {"relays": [RELAY_SOURCE], "relay_rate": 0.01, "relay_burst": 4},
            "rate_limit": {"per_address_rate": 0.01, "per_address_burst": 1},
        }
        daemon, relay, ca = behind_relay("limited", limits)
        first, second = (RelayClient(relay, ca, daemon.pin(), source) for source in CLIENTS)
        statuses = [first.post(b"\x00" * 64).status for _ in range(4)]
        self.assertNotIn(429, statuses)
        refused = second.post(b"\x00" * 64)
        self.assertEqual((refused.status, json.loads(refused.read())["error"]), (429, "rate_limited"))
        self.assertTrue(refused.getheader("retry-after"))

    def test_proof_of_work_through_the_relay(self) -> None:
        daemon, relay, ca = behind_relay("pow", {"pow": {"enabled": True, "forced": True, "base_difficulty": 8}})
        client = RelayClient(relay, ca, daemon.pin(), CLIENTS[0])
        sealed = client.seal(user("Say hi.", 8))
        asked = client.post(sealed.body)
        body = json.loads(asked.read())
        self.assertEqual((asked.status, body["error"]), (429, "pow_required"))
        challenge = base64.b64decode(body["challenge"])
        nonce = solve(challenge, sealed.enc, body["difficulty"])
        header = base64.b64encode(challenge).decode() + "." + base64.b64encode(nonce).decode()
        events = client.read(sealed, client.post(sealed.body, header))
        self.assertEqual(events[-1][1]["type"], "done")
        # the work is bound to its request's enc: it admits no other request
        again = client.seal(user("Say hi.", 8))
        refused = client.post(again.body, header)
        self.assertEqual((refused.status, json.loads(refused.read())["error"]), (429, "pow_required"))
