"""
Many routers, one shared state: two routers, each with two workers, behind Debian's haproxy
(TCP mode, PROXY v2), keeping their admission state in Debian's redis-server (an ACL user with
a password file; no persistence) and answering from the shared stack's real llama-server. The
routers share one state directory (the same keys), as a deployment's routers share their keys.

haproxy has one balanced port and one port per router, so a test can send the same bytes to
each router in turn. Every test speaks from its own loopback address: limits are per address.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import TestCase

from privllm.keys.files import write_secret
from privllm.protocol.pow import solve
from privllm.protocol.v2.keys import verify_key_configs
from privllm.protocol.v2.request import SealedV2, seal_chat_request
from privllm.protocol.v2.response import ResponseReader
from privllm.test.redis_server import USER, RedisServer
from privllm.test.stack import Daemon, shared

from .docclient import DocClient, b64, open_stream, unb64
from .haproxy import HAProxy
from .test_e2e import QUESTION, ROUTER, user

BALANCER = "127.0.0.5"  # haproxy's source towards the routers: the only peer they accept
WORKERS = 2
DEVICE_BURST = 3
ADDRESS_BURST = 12
MAX_STREAMS = 3
LEASE_TTL = 6
FUTURE_SKEW = 1  # the routers' replay.future_skew: how long a fresh Redis refuses requests from before it
_fleet: dict[str, Fleet] = {}


def sections(redis: RedisServer, password_file: str, llama: str) -> dict[str, dict[str, Any]]:
    return {
        "server": {"proxy_protocol": True, "proxy_protocol_from": [BALANCER], "workers": WORKERS},
        "state": {
            "backend": "redis",
            "url": redis.url,
            "user": USER,
            "password_file": password_file,
            "lease_ttl": LEASE_TTL,
            "timeout": 0.5,  # Redis killed: each request refused within this
        },
        "llama": {"spawn": False},
        "backend": {"urls": [f"unix://{llama}"]},
        "rate_limit": {
            "per_address_rate": 0.01,
            "per_address_burst": ADDRESS_BURST,
            "per_device_rate": 0.01,
            "per_device_burst": DEVICE_BURST,
        },
        "load": {"max_streams": MAX_STREAMS},
        "replay": {"future_skew": FUTURE_SKEW},
        # Every request must bring proof of work (cheap here), so spending it once is shown too.
        "pow": {"forced": True, "base_difficulty": 4, "step": 0},
    }


class Fleet:
    def __init__(self) -> None:
        llama = shared(*ROUTER).llama_socket
        self.password = secrets.token_hex(16)
        self.redis = RedisServer(password=self.password)
        password_file = os.path.join(self.redis.directory, "password")
        write_secret(password_file, self.password.encode() + b"\n")
        config = sections(self.redis, password_file, llama)
        self.a = Daemon(config, name="fleet-a")
        self.a.start(wait=False)
        self._wait_logged(self.a, "shared state in Redis is ready")  # its keys exist: the second shares them
        shared_keys = {**config, "keys": {"state_dir": self.a.state_dir}}
        self.b = Daemon(shared_keys, name="fleet-b", ca_file=self.a.ca_file)
        self.b.start(wait=False)
        self.balancer = HAProxy([self.a.port, self.b.port], source=BALANCER, per_router=True).start()
        for daemon, port in zip((self.a, self.b), self.balancer.router_ports, strict=True):
            daemon.wait_ready(port)
        settle(self)

    @staticmethod
    def _wait_logged(daemon: Daemon, line: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while line not in daemon.log():
            assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)

    def cleanup(self) -> None:
        self.balancer.cleanup()
        self.b.cleanup()
        self.a.cleanup()
        self.redis.close()


def fleet() -> Fleet:
    if not _fleet:
        _fleet["one"] = Fleet()
        atexit.register(_fleet["one"].cleanup)
    return _fleet["one"]


class Client(DocClient):
    """The documented protocol from one loopback address, solving proof of work when asked."""

    def __init__(self, fleet: Fleet, source: str) -> None:
        super().__init__(fleet.balancer.port, fleet.a.ssl_context(), fleet.a.pin(), source)
        self.ports = [fleet.balancer.port, *fleet.balancer.router_ports]

    def send(self, body: dict[str, Any], port: int) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=self.context, timeout=60, source_address=self.source
        )
        raw = json.dumps(body).encode()
        conn.request("POST", "/api/chat", raw, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()

    def solved(self, body: dict[str, Any], port: int) -> dict[str, Any]:
        """The body with proof of work for the challenge the router at `port` asks."""
        status, raw = self.send(body, port)
        asked = json.loads(raw)
        assert (status, asked["error"]) == (429, "pow_required"), (status, raw)
        nonce = solve(unb64(asked["challenge"]), body["request_id"], asked["difficulty"])
        return dict(body, pow={"challenge": asked["challenge"], "nonce": b64(nonce)})

    def sealed(self, max_tokens: int = 8, port: int | None = None) -> tuple[dict[str, Any], bytes, bytes]:
        body, enc, secret = self.seal(user(QUESTION, max_tokens))
        return self.solved(body, port or self.ports[0]), enc, secret

    def v2_sealed(self, port: int) -> SealedV2:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=self.context, timeout=60, source_address=self.source
        )
        conn.request("GET", "/api/ohttp-keys")
        response = conn.getresponse()
        headers = {name.lower().encode(): value.encode() for name, value in response.getheaders()}
        config = verify_key_configs(response.read(), headers, self.pin, int(time.time())).configs[0]
        return seal_chat_request(config, self.device, user(QUESTION, 8), int(time.time()))

    def v2_send(self, body: bytes, port: int, work: str | None = None, raw: bool = False) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=self.context, timeout=60, source_address=self.source
        )
        headers = {"Content-Type": "message/ohttp-req", **({"Privllm-Pow": work} if work else {})}
        conn.request("POST", "/api/ohttp", body, headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, data if raw or response.status == 200 else json.loads(data)

    def chat_via(self, port: int, max_tokens: int = 8) -> list[dict[str, Any]]:
        body, enc, secret = self.sealed(max_tokens, port)
        status, raw = self.send(body, port)
        assert status == 200, (status, raw)
        return open_stream(raw, enc, secret)


def error(reply: tuple[int, bytes]) -> tuple[int, str]:
    return reply[0], json.loads(reply[1])["error"]


class ManyRouters(TestCase):
    timeout = 600

    def setUp(self) -> None:
        self.fleet = fleet()
        self.a_port, self.b_port = self.fleet.balancer.router_ports
        self.both = [self.a_port, self.b_port]

    def client(self, last_octet: int) -> Client:
        return Client(self.fleet, f"127.0.1.{last_octet}")

    # Hostile first

    def test_replay_refused_through_every_router(self) -> None:
        for octet, (first, other) in ((1, self.both), (6, self.both[::-1])):
            c = self.client(octet)  # each address sends 8 of its 12
            body, enc, secret = c.sealed(port=first)
            status, raw = c.send(body, first)
            self.assertEqual(status, 200)
            self.assertEqual(open_stream(raw, enc, secret)[-1]["type"], "done")
            for port in (other, other, first, self.fleet.balancer.port, self.fleet.balancer.port):
                self.assertEqual(error(c.send(body, port)), (409, "replay"))

    def test_proof_of_work_spent_once_across_routers(self) -> None:
        c = self.client(2)
        body, _, _ = c.sealed(port=self.a_port)
        forged = dict(body, ciphertext=b64(os.urandom(64)))
        self.assertEqual(error(c.send(forged, self.b_port)), (400, "decrypt_failed"))  # it spent the work
        self.assertEqual(error(c.send(body, self.a_port)), (429, "pow_required"))  # so the real one must redo it

    def test_v2_replay_and_proof_of_work_across_routers(self) -> None:
        """Protocol v2 through the same shared state: work bound to enc and spent once, enc
        remembered by every router."""
        c = self.client(7)
        sealed = c.v2_sealed(self.a_port)
        status, asked = c.v2_send(sealed.body, self.a_port)
        self.assertEqual((status, asked["error"]), (429, "pow_required"))
        nonce = solve(unb64(asked["challenge"]), sealed.enc, asked["difficulty"])
        work = f"{asked['challenge']}.{b64(nonce)}"
        status, raw = c.v2_send(sealed.body, self.a_port, work, raw=True)
        self.assertEqual(status, 200)
        reader = ResponseReader(sealed.context)
        reader.feed(raw)
        self.assertEqual(reader.end()[-1]["type"], "done")
        for port in (self.b_port, self.a_port):
            self.assertEqual(c.v2_send(sealed.body, port, work)[1]["error"], "replay")
        again = c.v2_sealed(self.b_port)
        status, body = c.v2_send(again.body, self.b_port, work)
        self.assertEqual((status, body["error"]), (429, "pow_required"), "bound to the first enc")

    def test_address_limit_holds_across_routers(self) -> None:
        flood = self.client(3)
        codes = [error(flood.send({}, self.both[i % 2]))[1] for i in range(ADDRESS_BURST + 2)]
        self.assertEqual(codes, ["malformed"] * ADDRESS_BURST + ["rate_limited"] * 2)
        self.assertEqual(error(self.client(4).send({}, self.a_port)), (400, "malformed"))  # another address

    def test_device_limit_holds_across_routers(self) -> None:
        c = self.client(5)
        outcomes = [c.chat_via(self.both[i % 2])[-1] for i in range(DEVICE_BURST + 1)]
        self.assertEqual([o["type"] for o in outcomes], ["done"] * DEVICE_BURST + ["error"])
        self.assertEqual(outcomes[-1]["code"], "rate_limited")  # sealed: only the device can read it
        other = self.client(5)  # same address, another device
        self.assertEqual(other.chat_via(self.b_port)[-1]["type"], "done")

    def test_global_stream_cap_across_routers_and_workers(self) -> None:
        clients = [self.client(10 + i) for i in range(MAX_STREAMS + 1)]
        held = [_Stream(c, c.sealed(400), port) for c, port in zip(clients, [*self.both, *self.both], strict=False)]
        try:
            for stream in held[:MAX_STREAMS]:
                self.assertEqual(stream.start(), 200)
            late = clients[MAX_STREAMS]
            body, _, _ = late.sealed()
            self.assertEqual(error(late.send(body, self.fleet.balancer.port)), (503, "unavailable"))
        finally:
            for stream in held[:MAX_STREAMS]:
                self.assertEqual(stream.finish()[-1]["type"], "done")
        self.assertEqual(clients[MAX_STREAMS].chat_via(self.fleet.balancer.port)[-1]["type"], "done")

    def test_redis_down_refuses_then_recovers_without_replay(self) -> None:
        """While Redis is down every chat is refused before decryption; a restarted Redis has
        forgotten the replay window, so a request from before is refused as stale, and fresh chats
        work again by themselves. It waits until both routers reach the new Redis (settle), so the
        tests that run after it find the fleet as they would have before."""
        c = self.client(30)
        before, _, _ = c.sealed(port=self.a_port)
        self.assertEqual(c.send(before, self.a_port)[0], 200)
        load = [self.client(31 + i) for i in range(2)]  # answers under way when Redis goes
        streams = [_Stream(x, x.sealed(200), port) for x, port in zip(load, self.both, strict=True)]
        for stream in streams:
            self.assertEqual(stream.start(), 200)
        self.fleet.redis.kill()
        try:
            started = time.monotonic()
            for port in (*self.both, *self.both):
                self.assertEqual(error(c.send(before, port)), (503, "unavailable"))
            self.assertLess(time.monotonic() - started, 10)
            for stream in streams:  # admitted before: they end whole
                self.assertEqual(stream.finish()[-1]["type"], "done")
        finally:
            self.fleet.redis.start()
            self.addCleanup(settle, self.fleet)  # a failure here must not leave the floor to the next test
        for port in self.both:  # remembered nowhere now, yet refused: it could have been seen
            self.assertEqual(reconnected(lambda: error(c.send(before, port))), (401, "stale"))
        settle(self.fleet)
        self.assertEqual(c.chat_via(self.a_port)[-1]["type"], "done")
        for port in self.both:
            self.assertEqual(error(c.send(before, port)), (401, "stale"))


def reconnected(ask: Callable[[], tuple[int, str]], timeout: float = 30.0) -> tuple[int, str]:
    """The answer once the router has reached the restarted Redis (it answers 503 until then;
    on a loaded machine the reconnection has taken seconds)."""
    deadline = time.monotonic() + timeout
    answer = ask()
    while answer == (503, "unavailable") and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = ask()
    return answer


def settle(fleet: Fleet) -> None:
    """Wait until both routers reach Redis again (bounded), then past a fresh Redis's floor: the
    first request it sees sets it, and until the routers' future skew has passed, requests
    timestamped before it are refused as stale (they could have been seen before)."""
    for i, port in enumerate(fleet.balancer.router_ports):
        probe = Client(fleet, f"127.0.2.{i + 1}")
        for _ in range(60):
            status, _ = probe.send({}, port)
            if status != 503:
                break
            time.sleep(0.5)
        assert status == 400, status  # malformed: the state counted it, so Redis answered
        body, _, _ = probe.seal(user(QUESTION))
        probe.send(body, port)  # sets the floor if Redis is fresh
    time.sleep(FUTURE_SKEW + 2)


class _Stream:
    """One chat whose answer is read later: its response headers mean the router holds its lease."""

    def __init__(self, client: Client, sealed: tuple[dict[str, Any], bytes, bytes], port: int) -> None:
        self.client, self.port = client, port
        self.body, self.enc, self.secret = sealed
        self.response: http.client.HTTPResponse | None = None

    def start(self) -> int:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.client.context, timeout=120, source_address=self.client.source
        )
        conn.request("POST", "/api/chat", json.dumps(self.body).encode(), {"Content-Type": "application/json"})
        self.response = conn.getresponse()
        return self.response.status

    def finish(self) -> list[dict[str, Any]]:
        assert self.response is not None
        return open_stream(self.response.read(), self.enc, self.secret)
