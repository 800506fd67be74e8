"""
Protocol v2 against the real stack: twistd running privllm with llama-server and SmolLM2,
reached over real TLS with http.client and the sans-IO v2 pieces only (no privllm client):
the signed key configurations checked against the pinned identity, a sealed chat posted, its
chunked answer read as it arrives. With the admission state in memory (the shared dev router)
and in a real redis-server.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import secrets
import time
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from privllm.protocol.ohttp.keyconfig import KeyConfig
from privllm.protocol.v2.keys import verify_key_configs
from privllm.protocol.v2.request import SealedV2, seal_chat_request
from privllm.protocol.v2.response import ResponseReader
from privllm.test.redis_server import RedisServer, available
from privllm.test.stack import Daemon, shared

from .test_e2e import QUESTION, ROUTER, user

_redis: dict[str, tuple[RedisServer, Daemon]] = {}
FUTURE_SKEW = 1


def redis_router() -> Daemon:
    """One router keeping its admission state in a real redis-server, on the shared llama-server."""
    if not _redis:
        redis = RedisServer(password=secrets.token_hex(16))
        started = time.monotonic()
        state = redis.state_section()
        llama = shared(*ROUTER).llama_socket
        sections = {
            "state": state,
            "llama": {"spawn": False},
            "backend": {"urls": [f"unix://{llama}"]},
            "replay": {"future_skew": FUTURE_SKEW},
        }
        daemon = Daemon(sections, name="v2-redis")
        _redis["one"] = (redis, daemon)

        def cleanup() -> None:
            daemon.cleanup()
            redis.close()

        atexit.register(cleanup)
        daemon.start()
        # A fresh Redis refuses requests timestamped before its start + future skew (they could
        # have been seen before it forgot them): let that pass.
        time.sleep(max(0.0, started + FUTURE_SKEW + 2 - time.monotonic()))
    return _redis["one"][1]


class OverTLS:
    """The client's side, by hand: http.client over the daemon's TLS."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.device = os.urandom(32)

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.daemon.port, context=self.daemon.ssl_context(), timeout=60)

    def config(self) -> KeyConfig:
        conn = self.connection()
        conn.request("GET", "/api/ohttp-keys")
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 200, (response.status, body)
        assert response.getheader("content-type") == "application/ohttp-keys"
        headers = {name.lower().encode(): value.encode() for name, value in response.getheaders()}
        return verify_key_configs(body, headers, self.daemon.pin(), int(time.time())).configs[0]

    def seal(self, chat: dict[str, Any], timestamp: int | None = None) -> SealedV2:
        return seal_chat_request(self.config(), self.device, chat, int(time.time()) if timestamp is None else timestamp)

    def post(self, body: bytes) -> tuple[http.client.HTTPSConnection, http.client.HTTPResponse]:
        conn = self.connection()
        conn.request("POST", "/api/ohttp", body=body, headers={"Content-Type": "message/ohttp-req"})
        return conn, conn.getresponse()

    def answer(self, sealed: SealedV2) -> tuple[ResponseReader, list[list[dict[str, Any]]]]:
        """The events as they were read: one list per read that opened any."""
        conn, response = self.post(sealed.body)
        try:
            assert response.status == 200, (response.status, response.read())
            assert response.getheader("content-type") == "message/ohttp-chunked-res"
            reader = ResponseReader(sealed.context)
            reads: list[list[dict[str, Any]]] = []
            for _ in range(100_000):  # bounded: the answer is at most max_tokens deltas
                data = response.read1(65536)
                if not data:
                    break
                events = reader.feed(data)
                if events:
                    reads.append(events)
            reads.append(reader.end())
            return reader, reads
        finally:
            conn.close()

    def refusal(self, body: bytes) -> tuple[int, dict[str, Any]]:
        conn, response = self.post(body)
        try:
            assert response.getheader("content-type") == "application/json"
            return response.status, json.loads(response.read())
        finally:
            conn.close()


class Memory(TestCase):
    timeout = 300

    def daemon(self) -> Daemon:
        return shared(*ROUTER)

    def setUp(self) -> None:
        self.client = OverTLS(self.daemon())

    def test_streamed_answer_then_replay_refused(self) -> None:
        sealed = self.client.seal(user(QUESTION, 64))
        reader, reads = self.client.answer(sealed)
        self.assertEqual(reader.status, 200)
        events = [e for read in reads for e in read]
        deltas = [e for e in events if e["type"] == "delta"]
        self.assertGreater(len(deltas), 3)
        self.assertGreater(
            sum(1 for read in reads if any(e["type"] == "delta" for e in read)), 1, "deltas arrive over time"
        )
        self.assertEqual(events[-1]["type"], "done")
        self.assertTrue(reader.finished)
        self.assertTrue("".join(d["text"] for d in deltas).strip())
        self.assertEqual(self.client.refusal(sealed.body), (409, {"error": "replay"}))

    def test_stale_is_answered_inside_with_the_date(self) -> None:
        sealed = self.client.seal(user("Hi", 4), timestamp=int(time.time()) - 3600)
        reader, reads = self.client.answer(sealed)
        self.assertEqual(reader.status, 401)
        self.assertLessEqual(abs((reader.date or 0) - time.time()), 5)
        self.assertEqual([e["code"] for read in reads for e in read], ["stale"])
        again, reads = self.client.answer(sealed)  # not remembered (as v1): a copy is stale again
        self.assertEqual((again.status, [e["code"] for read in reads for e in read]), (401, ["stale"]))

    def test_refusals_before_decryption(self) -> None:
        sealed = self.client.seal(user("Hi", 4))
        self.assertEqual(self.client.refusal(b"\x00" * 10), (400, {"error": "malformed"}))
        body = sealed.body[:-1] + bytes([sealed.body[-1] ^ 1])
        self.assertEqual(self.client.refusal(body), (400, {"error": "decrypt_failed"}))
        unknown = bytes([(sealed.body[0] + 100) % 256]) + sealed.body[1:]
        self.assertEqual(self.client.refusal(unknown), (422, {"error": "unknown_key"}))


class Redis(Memory):
    def daemon(self) -> Daemon:
        if not available():
            raise SkipTest("no redis-server")
        return redis_router()
