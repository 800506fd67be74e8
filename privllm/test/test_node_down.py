"""A node seen dead between health polls leaves service at once and comes back on the fast retry."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from typing import Any, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from ..config import load_config
from ..keys.pki import create_ca, issue
from ..services.node import InferenceNode
from ..services.router import Router
from ..upstream.breaker import CircuitBreaker
from ..upstream.health import HealthMonitor
from ..upstream.llama import LlamaServer
from ..upstream.pool import Node, NodePool
from ..upstream.supervisor import NAME, LlamaSupervisor
from .fakes import FakeUpstream

INTERVAL, RETRY = 5.0, 0.5


class Probe:
    """A health probe answered by the test, one Deferred per poll."""

    def __init__(self) -> None:
        self.polls: list[Deferred[bool]] = []

    def __call__(self) -> Deferred[bool]:
        self.polls.append(Deferred())
        return self.polls[-1]

    def answer(self, ready: bool) -> None:
        self.polls[-1].callback(ready)


class MarkDown(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.probe = Probe()
        self.changes: list[bool] = []
        self.nodes = [Node(f"n{i}", FakeUpstream(), CircuitBreaker(2, 5)) for i in range(2)]
        self.node = self.nodes[0]

        def changed(ready: bool) -> None:  # what the tap wires: readiness, metric, log line
            self.node.healthy = ready
            self.changes.append(ready)

        self.monitor = HealthMonitor(self.probe, INTERVAL, self.clock, changed, RETRY)
        self.node.on_down = self.monitor.down
        self.pool = NodePool(self.nodes)
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        self.probe.answer(True)

    def delays(self) -> list[float]:
        return [cast(DelayedCall, call).getTime() - self.clock.seconds() for call in self.clock.getDelayedCalls()]

    def test_down_at_once_then_fast_retries_until_back(self) -> None:
        self.nodes[1].healthy = False
        self.assertTrue(self.pool.ready(0))
        self.assertEqual(self.delays(), [INTERVAL])
        self.clock.advance(1)
        self.pool.mark_down(self.node)
        self.assertFalse(self.node.healthy)
        self.assertFalse(self.pool.ready(self.clock.seconds()))
        self.assertIsNone(self.pool.choose(self.clock.seconds()))
        self.assertEqual(self.changes, [True, False], "one change, as a failed poll reports it")
        self.assertEqual(self.delays(), [RETRY], "the slow poll gave way to the fast one")
        self.clock.advance(RETRY)
        self.probe.answer(False)  # llama-server restarting, model not loaded yet
        self.assertEqual(self.delays(), [RETRY])
        self.clock.advance(RETRY)
        self.probe.answer(True)
        self.assertTrue(self.pool.ready(self.clock.seconds()))
        self.assertIs(self.pool.choose(self.clock.seconds()), self.node)
        self.assertEqual(self.changes, [True, False, True])
        self.assertEqual(self.delays(), [INTERVAL], "back to the slow poll once ready")
        self.assertEqual(len(self.probe.polls), 3)

    def test_the_pool_stops_choosing_the_node(self) -> None:
        self.nodes[1].healthy = True
        self.pool.mark_down(self.node)
        self.assertEqual({id(self.pool.choose(0)) for _ in range(4)}, {id(self.nodes[1])})
        self.assertTrue(self.pool.ready(0), "the other node still serves")

    def test_repeated_marks_report_once_and_do_not_postpone_the_poll(self) -> None:
        for _ in range(3):
            self.pool.mark_down(self.node)
            self.clock.advance(RETRY / 4)
        self.assertEqual(self.changes, [True, False])
        self.assertEqual(self.delays(), [RETRY / 4], "due half a retry after the first mark")

    def test_a_stale_probe_does_not_bring_it_back(self) -> None:
        self.clock.advance(INTERVAL)  # a poll is in flight
        self.assertEqual(self.delays(), [])
        self.pool.mark_down(self.node)
        self.probe.answer(True)  # it had started before the node died
        self.assertFalse(self.node.healthy)
        self.assertFalse(self.monitor.ready)
        self.assertEqual(self.changes, [True, False])
        self.assertEqual(self.delays(), [RETRY], "it still schedules the fast retry, once")
        self.clock.advance(RETRY)
        self.probe.answer(True)  # started after the mark: believed
        self.assertTrue(self.node.healthy)
        self.assertEqual(self.changes, [True, False, True])

    def test_without_a_monitor_the_pool_still_marks(self) -> None:
        node = Node("bare", FakeUpstream(), CircuitBreaker(2, 5), healthy=True)
        pool = NodePool([node])
        pool.mark_down(node)
        self.assertFalse(pool.ready(0))

    def test_down_after_stop_schedules_nothing(self) -> None:
        self.monitor.stopService()
        self.pool.mark_down(self.node)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.node.healthy)


def _files(directory: str) -> Iterator[str]:
    for name, text in (("fake-llama", "#!/bin/sh\nexec sleep 60\n"), ("model.gguf", "")):
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o700)
        yield path


class SupervisorExit(TestCase):
    """The supervisor reports llama-server's exit, and the tap turns that into mark_down."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.binary, self.model = _files(self.dir)

    timeout = 10

    async def test_a_killed_process_is_reported_at_once(self) -> None:
        supervisor = LlamaSupervisor([self.binary, "--model", self.model], os.path.join(self.dir, "s.sock"))
        exited: Deferred[float] = Deferred()
        supervisor.on_exit = lambda: exited.callback(time.monotonic())
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        pid = supervisor.protocols[NAME].transport.pid  # type: ignore[union-attr]
        killed: list[float] = []

        def kill() -> None:
            killed.append(time.monotonic())
            os.kill(pid, signal.SIGKILL)

        deferLater(reactor, 0.2, kill)
        self.assertLess(await exited - killed[0], 1.0)

    def test_a_stop_while_a_restart_is_pending_leaves_no_socket_file(self) -> Deferred[None]:
        """llama-server died and left its socket file; procmon waits before the restart. A stop
        then must not leave the stale file in the state directory."""
        socket = os.path.join(self.dir, "s.sock")
        dying = os.path.join(self.dir, "dying-llama")
        with open(dying, "w") as f:
            f.write(f"#!/bin/sh\n: > {socket}\nexit 1\n")
        os.chmod(dying, 0o700)
        supervisor = LlamaSupervisor([dying, "--model", self.model], socket)
        exited: Deferred[None] = Deferred()
        supervisor.on_exit = lambda: exited.callback(None) if not exited.called else None
        supervisor.startService()
        self.addCleanup(lambda: supervisor.stopService() if supervisor.running else None)

        async def then_stop() -> None:
            await exited
            await deferLater(reactor, 0.05, lambda: None)  # procmon forgets the run after on_exit
            self.assertTrue(os.path.lexists(socket), "the dead process left its file")
            self.assertEqual(supervisor.protocols, {}, "a restart is pending")
            await supervisor.stopService()
            self.assertFalse(os.path.lexists(socket))

        return ensureDeferred(then_stop())

    def test_the_tap_wires_exit_to_the_node_and_the_node_to_its_monitor(self) -> None:
        environ = {
            "PRIVLLM_KEYS__STATE_DIR": os.path.join(self.dir, "state"),
            "PRIVLLM_LLAMA__BINARY": self.binary,
            "PRIVLLM_LLAMA__MODEL": self.model,
        }
        router = Router(load_config("dev", environ=environ), MemoryReactorClock())
        supervisor = next(s for s in router.service if isinstance(s, LlamaSupervisor))
        monitor = next(s for s in router.service if isinstance(s, HealthMonitor))
        node = router.pool.nodes[0]
        self.assertEqual(node.on_down, monitor.down)
        monitor.ready = node.healthy = True
        router.metrics.node_healthy.labels(node.name).set(1)
        assert supervisor.on_exit is not None
        supervisor.on_exit()
        self.assertFalse(node.healthy)
        self.assertFalse(monitor.ready)
        gauge = router.metrics.registry.get_sample_value("privllm_node_healthy", {"node": node.name})
        self.assertEqual(gauge, 0)


class PoolsClosedOnStop(TestCase):
    """Every upstream client the tap builds (one per node, or the node's forward, and one for
    /llama/metrics) closes its kept connections when the role's service stops."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        binary, model = _files(self.dir)
        self.environ = {
            "PRIVLLM_KEYS__STATE_DIR": os.path.join(self.dir, "state"),
            "PRIVLLM_LLAMA__BINARY": binary,
            "PRIVLLM_LLAMA__MODEL": model,
            "PRIVLLM_LLAMA__METRICS": "true",
        }
        self.made: list[LlamaServer] = []
        self.closed: list[LlamaServer] = []
        build = LlamaServer.__init__

        def init(client: LlamaServer, *args: Any, **kwargs: Any) -> None:
            build(client, *args, **kwargs)
            self.made.append(client)

        def close(client: LlamaServer) -> Deferred[None]:
            self.closed.append(client)
            return succeed(None)

        self.patch(LlamaServer, "__init__", init)
        self.patch(LlamaServer, "close", close)

    def _stop(self, root: MultiService) -> None:
        self.assertEqual(len(self.made), 2, "the upstream client and the /llama/metrics one")
        for service in root:  # the listeners (on the memory reactor): they cannot stop unstarted
            if isinstance(service, StreamServerEndpointService):
                service.startService()
        self.assertEqual(self.closed, [])
        self.successResultOf(root.stopService())
        self.assertCountEqual(self.closed, self.made)

    def test_the_router_closes_every_client(self) -> None:
        self._stop(Router(load_config("dev", environ=self.environ), MemoryReactorClock()).service)

    def test_a_node_closes_every_client(self) -> None:
        ca = os.path.join(self.dir, "ca")
        ca_cert = create_ca(ca)
        cert, key = issue(ca, "node", os.path.join(self.dir, "node"))
        self.environ |= {
            "PRIVLLM_SERVER__CLIENT_CA": ca_cert,
            "PRIVLLM_SERVER__CERTIFICATE": cert,
            "PRIVLLM_SERVER__PRIVATE_KEY": key,
            "PRIVLLM_SERVER__ALLOWED_CLIENTS": '["router"]',
        }
        self._stop(InferenceNode(load_config("dev", environ=self.environ), MemoryReactorClock()).service)
