"""
llama-server killed under the real dev stack: readiness turns 503 and chats are refused
before decryption at once, and service returns once the supervisor's restart has loaded the
model. The health poll is slow here and the breaker never opens, so only the node being
marked down can explain a quick refusal; the first kill comes with no chat in flight, so
there only the supervisor's exit can.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from twisted.trial.unittest import TestCase

from privllm.test.stack import Daemon

from .docclient import DocClient, open_stream
from .test_e2e import user

SLOW_POLL = 60.0  # backend.health_interval: far longer than the whole test
REFUSAL_BOUND = 0.5  # kill to refusal, with margin for a loaded 2-core machine
BACK_BOUND = 60.0  # restart to a served chat: model load on a busy machine, plus one fast poll
PAUSE = 0.02  # between a client's requests: well inside the per-address rate limit


@dataclass
class Chat:
    sent: float
    ended: float
    outcome: str  # "ok", "refused <code>" (plaintext, before decryption) or "sealed <code>"


def llama_pid(parent: int, not_this: int = 0) -> int | None:
    """The llama-server that `parent` (the daemon) spawned: setpriv execs it, so it is a direct child."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == not_this:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if comm == "llama-server" and rest[0] != "Z" and int(rest[1]) == parent:
            return int(entry)
    return None


class Chatter(threading.Thread):
    """One client sending short chats back to back, recording how each ended; holding `quiet` pauses it."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon=True)
        self.client = DocClient(daemon.port, daemon.ssl_context(), daemon.pin())
        self.key = next(k for k in self.client.keyset()["keys"] if k["status"] == "current")
        self.chats: list[Chat] = []
        self.stop = threading.Event()
        self.quiet = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            with self.quiet:
                sent = time.monotonic()
                outcome = self.one()
                self.chats.append(Chat(sent, time.monotonic(), outcome))
            time.sleep(PAUSE)

    def one(self) -> str:
        body, enc, secret = self.client.seal(user("Say hi.", 8), self.key)
        try:
            status, _, raw = self.client.post(body)
        except OSError as e:
            return f"transport {type(e).__name__}"
        if status != 200:
            return f"refused {json.loads(raw)['error']}"
        last = open_stream(raw, enc, secret)[-1]
        return "ok" if last["type"] == "done" else f"sealed {last['code']}"


@dataclass
class Cycle:
    killed: float
    not_ready: float | None  # first /health/ready 503, if any
    restarted: float  # the new llama-server appeared
    ready: float  # first /health/ready 200 after that


class NodeDown(TestCase):
    timeout = 400

    def setUp(self) -> None:
        sections = {"backend": {"health_interval": SLOW_POLL, "breaker_failures": 1000}, "pow": {"enabled": False}}
        self.daemon = Daemon(sections, name="node-down")
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

    def ready_status(self) -> int:
        return self.daemon.get("/health/ready")[0]

    def cycle(self, deadline: float) -> Cycle:
        """Kill llama-server, then watch readiness and the restart until the node serves again."""
        assert self.daemon.process is not None
        old = llama_pid(self.daemon.process.pid)
        assert old is not None, "llama-server is not a child of the daemon"
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        not_ready: float | None = None
        restarted = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if not restarted and llama_pid(self.daemon.process.pid, not_this=old):
                restarted = now
            status = self.ready_status()
            if status == 503 and not_ready is None:
                not_ready = time.monotonic()
            if status == 200 and restarted and (not_ready or now - killed > REFUSAL_BOUND):
                return Cycle(killed, not_ready, restarted, time.monotonic())
            time.sleep(0.005)
        self.fail(f"the node did not come back: restarted={restarted}\n{self.daemon.log()}")

    def test_kill_refuse_restart_serve(self) -> None:
        self.assertEqual(self.ready_status(), 200)
        chatter = Chatter(self.daemon)
        chatter.start()
        self.addCleanup(chatter.join, 60)  # before the daemon stops under it
        self.addCleanup(chatter.stop.set)
        deadline = time.monotonic() + 2 * BACK_BOUND + 60
        self.wait_served(chatter, 0.0, deadline)  # the stack serves before the kill
        with chatter.quiet:  # no chat in flight: only the supervisor can tell
            quiet = self.cycle(deadline)
        self.check_readiness("quiet", quiet, self.wait_served(chatter, quiet.restarted, deadline))
        busy = self.cycle(deadline)
        served = self.wait_served(chatter, busy.restarted, deadline)
        self.check_readiness("busy", busy, served)
        self.check_chats(busy, served, chatter.chats)

    def wait_served(self, chatter: Chatter, since: float, deadline: float) -> Chat:
        """The first chat sent after `since` that was answered."""
        while time.monotonic() < deadline:
            served = [c for c in chatter.chats if c.sent > since and c.outcome == "ok"]
            if served:
                return served[0]
            time.sleep(0.05)
        self.fail(f"no chat succeeded\n{self.daemon.log()}")

    def check_readiness(self, name: str, cycle: Cycle, served: Chat) -> None:
        figures = {
            "kill_to_readiness_503": None if cycle.not_ready is None else cycle.not_ready - cycle.killed,
            "kill_to_restart": cycle.restarted - cycle.killed,
            "restart_to_readiness_200": cycle.ready - cycle.restarted,
            "restart_to_served_chat_sent": served.sent - cycle.restarted,
            "restart_to_served_chat_end": served.ended - cycle.restarted,
        }
        print(f"node-down {name}: {json.dumps(figures)}", file=sys.stderr)
        self.assertIsNotNone(cycle.not_ready, "readiness never turned 503")
        assert cycle.not_ready is not None
        self.assertLess(cycle.not_ready - cycle.killed, REFUSAL_BOUND)
        self.assertLess(served.ended - cycle.restarted, BACK_BOUND)

    def check_chats(self, cycle: Cycle, served: Chat, chats: list[Chat]) -> None:
        during = [c for c in chats if c.ended > cycle.killed and c.sent < served.sent]
        refused = [c for c in during if c.outcome == "refused unavailable"]
        admitted = [c for c in during if not c.outcome.startswith("refused")]
        figures = {
            "kill_to_first_refused_chat": (refused[0].ended - cycle.killed) if refused else None,
            "admitted_sent_after_kill": [c.sent - cycle.killed for c in admitted],
            "chats_refused": len(refused),
            "chats_sealed_upstream_failed": sum(c.outcome == "sealed upstream_failed" for c in during),
            "outcomes": sorted({c.outcome for c in during}),
        }
        print(f"node-down chats: {json.dumps(figures)}", file=sys.stderr)
        self.assertTrue(refused, "chats were refused while the node was down")
        self.assertLess(refused[0].ended - cycle.killed, REFUSAL_BOUND + 1.0, "one chat may have been in flight")
        late = [c for c in admitted if c.sent > cycle.killed + REFUSAL_BOUND]
        self.assertEqual(late, [], "a chat was decrypted while the node was known to be down")
        self.assertEqual({c.outcome for c in during} - {"ok", "refused unavailable", "sealed upstream_failed"}, set())
