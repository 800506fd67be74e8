"""
server.workers = 2 on the real dev stack: one parent holds the port and supervises two router
workers (and llama-server); chats reach both, a killed worker costs only its own streams and
comes back, metrics add up to one router, and a stop leaves no process behind.

Which worker served what is seen from outside, never from the daemon's logs: each worker's
own metric file in the parent's metrics directory, and /proc (which worker holds a socket).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import time
from typing import Any

from prometheus_client.multiprocess import MultiProcessCollector
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from privllm.client import PrivllmClient
from privllm.client.api import TruncatedError
from privllm.protocol.errors import REFUSAL_REASONS
from privllm.test.redis_server import RedisServer
from privllm.test.stack import Daemon, shared


def sections() -> dict[str, dict[str, Any]]:
    """Two workers, sharing their admission state in a redis-server of their own (a Redis
    refuses routers whose state keys differ, and each daemon here has its own state directory)."""
    redis = RedisServer()
    atexit.register(redis.close)
    # As a Redis that has run longer than the replay window: a fresh one refuses requests
    # timestamped before its start plus the future skew, which a loaded machine can reach.
    redis.command("SET", "privllm:fresh", "1")
    # A fresh Redis refuses requests timestamped before its start plus the future skew: keep it short.
    return {"server": {"workers": 2}, "state": {"backend": "redis", "url": redis.url}, "replay": {"future_skew": 1}}


LONG = {
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}],
    "max_tokens": 400,
    "temperature": 0,
}
SHORT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}
RESTART_TIMEOUT = 60.0


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def workers(daemon: Daemon) -> list[int]:
    """The parent's children that are router workers (the others: llama-server)."""
    assert daemon.process is not None
    found = []
    for pid in children(daemon.process.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"--worker-fd" in f.read().split(b"\0"):
                    found.append(pid)
        except FileNotFoundError:
            pass
    return sorted(found)


def established(pid: int, port: int) -> int:
    """How many ESTABLISHED connections to `port` the process holds."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        held += bool(match and match.group(1) in inodes)
    return held


def sealed_per_worker(daemon: Daemon) -> dict[int, float]:
    """privllm_sealed_chunks from each process's own counter file (its pid in the name)."""
    directory = os.path.join(daemon.state_dir, f"metrics-{daemon.port}")
    counts = {}
    for name in os.listdir(directory):
        match = re.fullmatch(r"counter_(\d+)\.db", name)
        if match:
            for metric in MultiProcessCollector.merge([os.path.join(directory, name)]):
                if metric.name == "privllm_sealed_chunks":
                    counts[int(match.group(1))] = sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return counts


def pid_of(labels: str | None) -> int:
    match = re.search(r'pid="(\d+)"', labels or "")
    return int(match.group(1)) if match else 0


def scraped(daemon: Daemon, name: str) -> list[tuple[str, float]]:
    text = daemon.get("/metrics", tls=False)[2].decode()
    return [(m.group(1), float(m.group(2))) for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)]


class Workers(TestCase):
    timeout = 300

    async def setUp(self) -> None:
        self.daemon = shared("workers", sections())
        await self._all_healthy()

    async def _all_healthy(self) -> None:
        """Both workers have probed llama-server (a worker accepts only after its first probe)."""
        deadline = time.monotonic() + RESTART_TIMEOUT
        while time.monotonic() < deadline:
            healthy = scraped(self.daemon, "privllm_node_healthy")
            pids = workers(self.daemon)
            if len(pids) == 2 and sorted(pid_of(labels) for labels, value in healthy if value == 1) == pids:
                return
            await deferLater(reactor, 0.2)
        raise AssertionError(f"the workers did not all become healthy: {healthy}")

    def client(self) -> PrivllmClient:
        d = self.daemon
        client = PrivllmClient(reactor, d.url, d.pin(), os.urandom(32), d.cert())
        self.addCleanup(client.close)
        return client

    async def _wait_for_workers(self, old: list[int]) -> list[int]:
        deadline = time.monotonic() + RESTART_TIMEOUT
        while time.monotonic() < deadline:
            now = workers(self.daemon)
            if len(now) == 2 and now != old:
                return now
            await deferLater(reactor, 0.2)
        raise AssertionError(f"no worker came back: {workers(self.daemon)}")

    # Hostile: a worker killed in the middle of a stream.

    async def test_killed_worker_truncates_only_its_stream_and_restarts(self) -> None:
        before = workers(self.daemon)
        self.assertEqual(len(before), 2)
        held = {pid: established(pid, self.daemon.port) for pid in before}
        killed: list[int] = []

        def kill_on_first_delta(chunk: dict[str, Any]) -> None:
            if chunk["type"] == "delta" and not killed:
                serving = [p for p in before if established(p, self.daemon.port) > held[p]]
                self.assertEqual(len(serving), 1, "exactly one worker holds the new stream")
                os.kill(serving[0], signal.SIGKILL)
                killed.append(serving[0])

        with self.assertRaises(TruncatedError):
            await self.client().chat(LONG, kill_on_first_delta)
        self.assertEqual(len(killed), 1)
        # The other worker serves while the killed one is restarted.
        survivor = [p for p in before if p not in killed]
        self.assertIn(survivor[0], workers(self.daemon))
        result = await self.client().chat(SHORT)
        self.assertTrue(result.text)
        after = await self._wait_for_workers(before)
        await self._all_healthy()
        self.assertNotIn(killed[0], after)
        self.assertIn(survivor[0], after)
        for _ in range(4):  # whichever worker takes them
            self.assertTrue((await self.client().chat(SHORT)).text)

    # Both workers answer; metrics add up to one router.

    async def test_both_workers_answer_and_metrics_add_up(self) -> None:
        pids = workers(self.daemon)
        self.assertEqual(len(pids), 2)
        for _ in range(6):  # bounded: batches of concurrent chats, each on new connections
            results = await gatherResults([ensureDeferred(self.client().chat(SHORT)) for _ in range(4)])
            self.assertTrue(all(r.text for r in results))
            per_worker = sealed_per_worker(self.daemon)
            if all(per_worker.get(p, 0) > 0 for p in pids):
                break
        per_worker = sealed_per_worker(self.daemon)
        self.assertTrue(all(per_worker.get(p, 0) > 0 for p in pids), per_worker)
        # One router: a single series, the sum of every worker's (dead ones included: a counter never falls).
        series = scraped(self.daemon, "privllm_sealed_chunks_total")
        self.assertEqual(series, [(None, sum(per_worker.values()))])
        self.assertEqual(len(scraped(self.daemon, "privllm_active_streams")), 1)
        healthy = scraped(self.daemon, "privllm_node_healthy")
        self.assertEqual(sorted(pid_of(labels) for labels, _ in healthy), pids, "one series per live worker")
        for name in ("privllm_key_age_seconds", "privllm_key_rotation_due_seconds", "privllm_replay_capacity"):
            gauges = scraped(self.daemon, name)  # the worst of the workers' own views, set by their timers
            self.assertEqual(len(gauges), 1, name)
            self.assertIsNone(gauges[0][0], name)
        self.assertEqual(scraped(self.daemon, "privllm_replay_capacity")[0][1], 200_000)
        open_breakers = [v for labels, v in scraped(self.daemon, "privllm_breaker_state") if 'state="open"' in labels]
        self.assertEqual(open_breakers, [0.0, 0.0])
        reasons = {labels for labels, _ in scraped(self.daemon, "privllm_refusals_total")}
        self.assertEqual(reasons, {f'{{reason="{r}"}}' for r in REFUSAL_REASONS}, "every reason from 0, summed")
        # Workers' lines reach the parent's log; nothing of a conversation does.
        log = self.daemon.log()
        self.assertGreaterEqual(log.count("a router worker is accepting"), 2)
        self.assertNotIn("Say hello", log)
        self.assertNotIn("lighthouse", log)


class Stop(TestCase):
    timeout = 180

    def test_sigterm_stops_every_worker(self) -> None:
        daemon = Daemon(sections(), name="workers-stop")
        self.addCleanup(daemon.cleanup)
        daemon.start()
        assert daemon.process is not None
        pids = children(daemon.process.pid)
        self.assertEqual(len(workers(daemon)), 2)
        self.assertEqual(len(pids), 3, "two workers and llama-server")
        daemon.stop()
        self.assertIn(daemon.process.returncode, (0, -signal.SIGTERM))
        self.assertEqual([p for p in pids if os.path.exists(f"/proc/{p}")], [])
        self.assertIn("a router worker exited", daemon.log())

    def test_parent_killed_outright_takes_every_worker(self) -> None:
        daemon = Daemon(sections(), name="workers-kill")
        self.addCleanup(daemon.cleanup)
        daemon.start()
        assert daemon.process is not None
        pids = children(daemon.process.pid)
        self.assertEqual(len(pids), 3)
        daemon.process.kill()  # no stopService: setpriv --pdeathsig ends the children
        daemon.process.wait()
        deadline = time.monotonic() + 15
        while [p for p in pids if os.path.exists(f"/proc/{p}")] and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual([p for p in pids if os.path.exists(f"/proc/{p}")], [])
