from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from .. import tap, workers
from ..config import ConfigError, load_config
from ..config.profiles import profile
from ..keys.material import IDENTITY_KEY, KEYRING, POW_KEY, TLS_CERT
from ..protocol.keyring import KeyRing
from ..services.errors import StartError
from ..state.redis import STATE_KEY
from .fakes import FakeReactor, ProcessMemoryReactor


def end(protocol: Any, reason: Exception | None = None) -> None:
    protocol.processEnded(Failure(reason or ProcessTerminated(signal=9)))


class Count(TestCase):
    def test_zero_is_one_per_core_when_the_state_is_shared(self) -> None:
        self.assertEqual(workers.worker_count(0, True, lambda: 6), 6)
        self.assertEqual(workers.worker_count(0, True, lambda: 10_000), workers.MAX_WORKERS)
        self.assertEqual(workers.worker_count(0, True, lambda: 0), 1)
        self.assertEqual(workers.worker_count(3, True, lambda: 6), 3)
        self.assertGreaterEqual(workers.cores(), 1)

    def test_one_process_when_the_state_is_in_memory(self) -> None:
        """Each worker would keep its own replay window: a replay accepted once per worker."""
        self.assertEqual(workers.worker_count(0, False, lambda: 6), 1)
        with self.assertRaises(ConfigError) as cm:
            load_config("dev", environ={"PRIVLLM_SERVER__WORKERS": "2"})
        self.assertIn('more than one worker needs state.backend = "redis"', str(cm.exception))
        environ = {"PRIVLLM_SERVER__WORKERS": "2", "PRIVLLM_STATE__BACKEND": '"redis"'}
        environ["PRIVLLM_STATE__URL"] = '"unix:///run/redis.sock"'
        self.assertEqual(load_config("dev", environ=environ).server.workers, 2)

    def test_config_range_and_profiles(self) -> None:
        for bad in ("-1", "257", "1.5", '"4"'):
            with self.assertRaises(ConfigError) as cm:
                load_config("dev", environ={"PRIVLLM_SERVER__WORKERS": bad})
            self.assertIn("server.workers", str(cm.exception))
        self.assertEqual(load_config("dev", environ={}).server.workers, 1)
        self.assertEqual(load_config("dev", environ={"PRIVLLM_SERVER__WORKERS": "0"}).server.workers, 0)
        self.assertEqual(profile("prod")["server"]["workers"], 0)

    def test_worker_fd_option(self) -> None:
        for argv in (["--role", "node", "--worker-fd", "3"], ["--worker-fd", "2"], ["--worker-fd", "x"]):
            with self.assertRaises(usage.UsageError):
                tap.Options().parseOptions(argv)
        options = tap.Options()
        options.parseOptions(["--worker-fd", "3"])
        self.assertEqual(options["worker-fd"], 3)
        self.assertIsNone(tap.Options()["worker-fd"])


class Child(TestCase):
    def test_argv(self) -> None:
        argv = workers.child_argv("prod", "/etc/privllm.toml", python="/venv/bin/python")
        start = argv.index("/venv/bin/python")
        self.assertEqual(argv[:start], [workers.SETPRIV, "--pdeathsig", "TERM", "--"][:start])
        self.assertEqual(argv[start + 1 : start + 4], ["-P", "-c", workers.TWISTD])  # not the cwd's modules
        self.assertIn("--pidfile=", argv)
        tail = argv[argv.index("privllm") :]
        self.assertEqual(
            tail,
            ["privllm", "--env", "prod", "--role", "router", "--worker-fd", "3", "--config", "/etc/privllm.toml"],
        )
        self.assertNotIn("--config", workers.child_argv("dev", None))
        relative = workers.child_argv("dev", "privllm.toml")
        self.assertEqual(relative[-1], os.path.join(os.getcwd(), "privllm.toml"))  # workers run in /

    def test_env_passes_through_and_names_the_metrics_directory(self) -> None:
        parent = {"PATH": "/bin", "PRIVLLM_SERVER__PORT": "1", workers.METRICS_ENV: "/elsewhere"}
        env = workers.child_env("/state/metrics-1", parent)
        self.assertEqual(env, {"PATH": "/bin", "PRIVLLM_SERVER__PORT": "1", workers.METRICS_ENV: "/state/metrics-1"})
        self.assertEqual(parent[workers.METRICS_ENV], "/elsewhere", "the parent's own environment is unchanged")


class Files(TestCase):
    def test_metrics_dir_is_private_and_emptied(self) -> None:
        state = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, state)
        first = workers.metrics_dir(state, 8443)
        with open(os.path.join(first, "counter_1.db"), "w"):
            pass
        again = workers.metrics_dir(state, 8443)
        self.assertEqual((first, os.listdir(again)), (again, []))
        self.assertEqual(os.stat(again).st_mode & 0o777, 0o700)
        self.assertNotEqual(workers.metrics_dir(state, 8444), again)

    def test_listening_socket(self) -> None:
        sock = workers.listening_socket("127.0.0.1", 0)
        self.addCleanup(sock.close)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
        with self.assertRaises(OSError):  # taken: one clear error, nothing left open
            workers.listening_socket("127.0.0.1", sock.getsockname()[1])


class Spawn(TestCase):
    def test_listening_fd_is_inherited_as_fd_3(self) -> None:
        reactor, ended = FakeReactor(), list[int]()
        wrapper = workers.InheritingReactor(reactor, 17, ended.append)
        inner = ProcessProtocol()
        process = wrapper.spawnProcess(inner, "/bin/x", ["/bin/x"], env={"A": "1"})
        protocol, args, env, fds = reactor.spawned[0]
        self.assertEqual(fds, {0: "w", 1: "r", 2: "r", 3: 17})
        self.assertEqual((args, env), (["/bin/x"], {"A": "1"}))
        self.assertIs(inner.transport, process)
        self.assertEqual(ended, [])
        end(protocol)
        self.assertEqual(ended, [process.pid])

    def test_a_caller_cannot_take_fd_3(self) -> None:
        reactor = FakeReactor()
        workers.InheritingReactor(reactor, 17, lambda pid: None).spawnProcess(
            ProcessProtocol(), "/bin/x", ["/bin/x"], childFDs={3: 9, 4: 4}
        )
        self.assertEqual(reactor.spawned[0][3][3], 17)

    def test_time_is_the_real_reactor(self) -> None:
        reactor = FakeReactor()
        wrapper = workers.InheritingReactor(reactor, 17, lambda pid: None)
        self.assertIs(IReactorTime(wrapper), wrapper)
        called: list[int] = []
        wrapper.callLater(2, called.append, 1)
        reactor.advance(1)
        self.assertEqual((wrapper.seconds(), called), (1.0, []))
        reactor.advance(1)
        self.assertEqual((called, wrapper.getDelayedCalls()), ([1], []))


class Monitor(TestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.sock = socket.socket()
        self.addCleanup(self.sock.close)
        self.directory = tempfile.mkdtemp()
        self.monitor = workers.WorkerMonitor(self.reactor, self.sock, 2, ["/bin/w"], {"E": "1"}, self.directory)

    def test_a_crashed_worker_is_restarted_and_its_live_gauges_retired(self) -> None:
        self.monitor.startService()
        self.reactor.advance(workers.RESTART_THRESHOLD + 1)  # ran longer than the threshold: restarted at once
        self.assertEqual(len(self.reactor.spawned), 2)
        crashed = self.reactor.spawned[0][0]
        live = os.path.join(self.directory, f"gauge_livesum_{crashed.pid}.db")
        kept = os.path.join(self.directory, f"counter_{crashed.pid}.db")
        for path in (live, kept):
            with open(path, "w"):
                pass
        end(crashed)
        self.assertFalse(os.path.exists(live), "a dead worker's streams no longer count")
        self.assertTrue(os.path.exists(kept), "its counts stay in the sums")
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(self.reactor.spawned[2][1:3], (["/bin/w"], {"E": "1"}))
        self.monitor.stopService()

    def test_quick_deaths_back_off(self) -> None:
        self.monitor.startService()
        end(self.reactor.spawned[0][0])
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 2, "died at once: not restarted at once")
        self.reactor.advance(self.monitor.minRestartDelay)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.monitor.stopService()

    def test_a_worker_that_cannot_start_is_not_restarted_in_a_loop(self) -> None:
        """It ends a little after its start each time (e.g. it found Redis unsafe): the delays
        grow to RESTART_MAX_DELAY instead of a restart at once, over and over."""
        self.monitor.startService()
        delays = []
        for _ in range(8):
            self.reactor.advance(1.2)
            end(self.monitor.protocols["worker-0"])
            delays.append(self.monitor.delay["worker-0"])
            self.reactor.advance(workers.RESTART_MAX_DELAY)  # restarted by then
        self.assertEqual(delays, [2, 4, 8, 16, 32, 60, 60, 60])
        self.monitor.stopService()

    def test_stop_terms_every_worker_and_waits_for_all(self) -> None:
        self.monitor.startService()
        stopped = self.monitor.stopService()
        results: list[Any] = []
        stopped.addCallback(results.append)
        first, second = (entry[0] for entry in self.reactor.spawned)
        self.assertEqual((first.transport.signals, second.transport.signals), (["TERM"], ["TERM"]))
        end(first, ProcessDone(0))
        self.assertEqual((results, self.sock.fileno() >= 0), ([], True))
        self.reactor.advance(self.monitor.killTime)
        self.assertEqual(second.transport.signals, ["TERM", "KILL"], "a worker that ignores TERM is killed")
        end(second)
        self.assertEqual(results, [None])
        self.assertEqual(self.sock.fileno(), -1, "the listening socket closes after the last worker")
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2, "nothing restarts after a stop")

    def test_stop_with_no_worker_running(self) -> None:
        results: list[Any] = []
        self.monitor.stopService().addCallback(results.append)
        self.assertEqual(results, [None])


class Output(TestCase):
    def test_stdout_lines_pass_stderr_is_withheld(self) -> None:
        seen: list[LogEvent] = []
        globalLogPublisher.addObserver(seen.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)  # type: ignore[arg-type]
        workers.forward_child_output({"line": "- [privllm.web.status#info] node up", "stream": "stdout"})
        workers.forward_child_output({"line": "Traceback: secret prompt", "stream": "stderr"})
        self.assertEqual([e.get("worker_line") for e in seen], ["- [privllm.web.status#info] node up", None])
        self.assertNotIn("secret", repr(seen))


class AdoptingReactor(MemoryReactor):
    """Keeps a copy of each adopted descriptor (the endpoint closes its own once adopted)."""

    def __init__(self, test: TestCase) -> None:
        super().__init__()
        self.test = test

    def adoptStreamPort(self, fileno: int, addressFamily: int, factory: Any) -> Any:
        copy = os.dup(fileno)
        self.test.addCleanup(os.close, copy)
        return super().adoptStreamPort(copy, addressFamily, factory)


class Adopt(TestCase):
    def setUp(self) -> None:
        self.sock = workers.listening_socket("127.0.0.1", 0)
        self.addCleanup(self.sock.close)
        self.fd = os.dup(self.sock.fileno())
        self.reactor = AdoptingReactor(self)
        self.adopted = self.reactor.adoptedPorts
        self.first: Deferred[None] = Deferred()

    def endpoint(self) -> workers.AdoptedEndpoint:
        return workers.AdoptedEndpoint(self.reactor, self.fd, lambda: self.first)

    def test_accepts_only_after_the_first_probes(self) -> None:
        listening = self.endpoint().listen("factory")
        self.assertEqual(self.adopted, [])
        self.assertNoResult(listening)
        self.first.callback(None)
        self.assertEqual(self.successResultOf(listening).getHost().port, 1234)  # MemoryReactor's port
        self.assertEqual([(f, s) for _, f, s in self.adopted], [(socket.AF_INET, "factory")])
        self.assertFalse(os.get_blocking(self.adopted[0][0]))
        with self.assertRaises(OSError):
            os.fstat(self.fd)  # the inherited descriptor is closed: the reactor holds a copy

    def test_a_failed_probe_still_ends_the_wait(self) -> None:
        listening = self.endpoint().listen("factory")
        self.first.errback(RuntimeError("probe"))
        self.successResultOf(listening)
        self.assertEqual(len(self.adopted), 1)

    def test_stopped_before_the_probes_never_accepts(self) -> None:
        listening = self.endpoint().listen("factory")
        listening.cancel()
        self.failureResultOf(listening, CancelledError)
        self.first.callback(None)
        self.assertEqual(self.adopted, [])
        with self.assertRaises(OSError):
            os.fstat(self.fd)  # given back: a stopped worker holds no listening socket


class Build(TestCase):
    """tap.build chooses one process, a worker, or a parent; only the parent writes shared files."""

    def config(self, workers_: str) -> Any:
        self.state = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.state)
        environ = {
            "PRIVLLM_KEYS__STATE_DIR": self.state,
            "PRIVLLM_SERVER__PORT": "0",
            "PRIVLLM_METRICS__PORT": "0",
            "PRIVLLM_SERVER__WORKERS": workers_,
            "PRIVLLM_STATE__BACKEND": '"redis"',
            "PRIVLLM_STATE__URL": '"unix:///nonexistent/redis.sock"',
            "PRIVLLM_LLAMA__SPAWN": "false",
            "PRIVLLM_BACKEND__URLS": '["unix:///nonexistent/llama.sock"]',
        }
        return load_config("dev", environ=environ)

    def options(self, *argv: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_a_worker_on_an_empty_state_directory_writes_nothing(self) -> None:
        with self.assertRaises(StartError):
            tap.build(self.config("2"), "router", MemoryReactorClock(), self.options("--worker-fd", "3"))
        self.assertEqual(os.listdir(self.state), [])

    def test_the_parent_writes_every_shared_file_first(self) -> None:
        wiped: list[KeyRing] = []
        wipe = KeyRing.wipe

        def recorded(ring: KeyRing) -> None:
            wiped.append(ring)
            wipe(ring)

        self.patch(KeyRing, "wipe", recorded)
        root = tap.build(self.config("2"), "router", ProcessMemoryReactor(), self.options())
        self.assertEqual(len(wiped), 1, "the parent serves no chat: it keeps no HPKE key")
        self.assertEqual(wiped[0].keys, [])
        monitors = [s for s in root if isinstance(s, workers.WorkerMonitor)]
        self.assertEqual(len(monitors), 1)
        monitor = monitors[0]
        self.addCleanup(monitor.stopService)  # never started: closes the socket
        for name in (IDENTITY_KEY, TLS_CERT, POW_KEY, KEYRING, STATE_KEY):
            self.assertTrue(os.path.exists(os.path.join(self.state, name)), name)
        self.assertEqual(monitor.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
        self.assertEqual(os.stat(monitor.directory).st_mode & 0o777, 0o700)
        # A worker started now only reads what the parent wrote.
        before = {name: os.stat(os.path.join(self.state, name)).st_mtime_ns for name in os.listdir(self.state)}
        tap.build(self.config_again(), "router", MemoryReactorClock(), self.options("--worker-fd", "3"))
        after = {name: os.stat(os.path.join(self.state, name)).st_mtime_ns for name in os.listdir(self.state)}
        self.assertEqual(before, after)

    def config_again(self) -> Any:
        environ = {
            "PRIVLLM_KEYS__STATE_DIR": self.state,
            "PRIVLLM_SERVER__WORKERS": "2",
            "PRIVLLM_STATE__BACKEND": '"redis"',
            "PRIVLLM_STATE__URL": '"unix:///nonexistent/redis.sock"',
            "PRIVLLM_LLAMA__SPAWN": "false",
            "PRIVLLM_BACKEND__URLS": '["unix:///nonexistent/llama.sock"]',
        }
        return load_config("dev", environ=environ)

    def test_one_worker_is_one_process(self) -> None:
        root = tap.build(self.config("1"), "router", MemoryReactorClock(), self.options())
        self.assertEqual([s for s in root if isinstance(s, workers.WorkerMonitor)], [])
        self.assertFalse(any(name.startswith("metrics-") for name in os.listdir(self.state)))
