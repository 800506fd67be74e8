"""
A router with its admission state in Redis serves nothing before Redis has answered and passed
its checks: an unreachable Redis keeps the listener closed (tried again with backoff) until it
comes; an unsafe Redis (one that snapshots to disk) stops the router with one clear line.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import TestCase

from privllm.test.redis_server import RedisServer
from privllm.test.stack import Daemon

DEADLINE = 60.0


def router(url: str) -> Daemon:
    # No inference node is needed to see whether the listener opens (/health, not /health/ready).
    sections = {
        "state": {"backend": "redis", "url": url},
        "llama": {"spawn": False},
        "backend": {"urls": ["unix:///nonexistent/llama.sock"]},
    }
    daemon = Daemon(sections, name="state-start")
    return daemon


def listening(daemon: Daemon) -> bool:
    try:
        return daemon.get("/health")[0] == 200
    except OSError:
        return False


class Start(TestCase):
    timeout = 180

    def test_unsafe_redis_stops_the_router(self) -> None:
        redis = RedisServer()
        self.addCleanup(redis.close)
        redis.command("CONFIG", "SET", "save", "900 1")  # snapshots: the replay window would reach the disk
        daemon = router(redis.url)
        self.addCleanup(daemon.cleanup)
        daemon.start(wait=False)
        assert daemon.process is not None
        daemon.process.wait(DEADLINE)  # it ends by itself (twistd exits 0 after the reactor stops)
        self.assertIn("privllm: Redis is unsafe for the replay window (save is '900 1'", daemon.log())
        self.assertNotIn("Starting factory <privllm.web.request.PrivllmSite", daemon.log())

    def test_unreachable_redis_keeps_the_router_closed_until_it_comes(self) -> None:
        redis = RedisServer()
        self.addCleanup(redis.close)
        redis.stop()
        daemon = router(redis.url)
        self.addCleanup(daemon.cleanup)
        daemon.start(wait=False)
        deadline = time.monotonic() + DEADLINE
        while "shared state not ready" not in daemon.log():
            self.assertLess(time.monotonic(), deadline, daemon.log())
            time.sleep(0.2)
        self.assertFalse(listening(daemon))
        assert daemon.process is not None
        self.assertIsNone(daemon.process.poll(), "still running, trying again")
        redis.start()
        while not listening(daemon):
            self.assertLess(time.monotonic(), deadline, daemon.log())
            time.sleep(0.2)
        self.assertIn("shared state in Redis is ready", daemon.log())
        self.assertTrue(os.path.exists(os.path.join(daemon.state_dir, "state.key")))
