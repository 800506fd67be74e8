"""
Router workers: one parent holds the public listening socket, N router processes accept on it.

The parent opens the socket and hands its descriptor to every child (fd 3), which adopts it
with `reactor.adoptStreamPort`. The listen queue is the parent's: a worker that crashes loses
only the connections it had accepted, never connections still queued (with SO_REUSEPORT each
worker has its own queue, and the kernel drops it with the worker); no other process of the
same user can join the group; and the same child runs unchanged under systemd socket activation.

The children are supervised by twisted.runner.procmon. procmon passes no descriptors, so it
is given a reactor wrapper whose spawnProcess adds the listening socket, and which tells the
parent when a child has ended (so its metrics files can be retired). Children's log lines
(their stdout, already filtered by their own allow-list) are logged by the parent; what they
write on stderr is withheld.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, AnyStr

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessProtocol,
    IProcessTransport,
    IReactorProcess,
    IReactorSocket,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import FileLogObserver, LogEvent, Logger, formatEventAsClassicLogText, globalLogPublisher
from twisted.python.failure import Failure
from twisted.runner.procmon import ProcessMonitor
from zope.interface import implementer

from .config.schema import MAX_WORKERS

__all__ = [
    "LISTEN_BACKLOG",
    "METRICS_ENV",
    "RESTART_MAX_DELAY",
    "RESTART_THRESHOLD",
    "SETPRIV",
    "SYSTEMD_ENV",
    "TWISTD",
    "WORKER_FD",
    "AdoptedEndpoint",
    "InheritingReactor",
    "WorkerMonitor",
    "child_argv",
    "child_env",
    "cores",
    "forward_child_output",
    "inherited_socket",
    "listening_socket",
    "metrics_dir",
    "metrics_registry",
    "worker_count",
    "worker_log",
]

WORKER_FD = 3  # the listening socket's number in every child
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
SETPRIV = "/usr/bin/setpriv"
TWISTD = "from twisted.scripts.twistd import run; run()"
LISTEN_BACKLOG = socket.SOMAXCONN
log = Logger()


def cores() -> int:
    """The cores this process may run on (its affinity mask, as taskset or a cgroup set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux, or the call is filtered
        return os.cpu_count() or 1


def worker_count(configured: int, shared_state: bool, count_cores: Callable[[], int] = cores) -> int:
    """server.workers: 0 means one per core (bounded like the setting itself) when the admission
    state is shared (Redis); with the state in one process's memory, one process: each worker
    would keep its own replay window and limits. (More than one with memory is a config error.)"""
    if configured:
        return configured
    return max(1, min(count_cores(), MAX_WORKERS)) if shared_state else 1


def listening_socket(host: str, port: int, family: int = socket.AF_INET) -> socket.socket:
    """The public TCP socket (IPv4 or IPv6), bound and listening; no process accepts on it here."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's own listener does
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def inherited_socket(fd: int) -> socket.socket:
    """A listening TCP socket this process was given (systemd socket activation), to hand on to
    the workers. ValueError if `fd` is anything else."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:  # not a socket, or not open
        raise ValueError(f"descriptor {fd} is not a listening TCP socket ({e.strerror})") from None
    if (
        sock.family not in (socket.AF_INET, socket.AF_INET6)
        or sock.type != socket.SOCK_STREAM
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        sock.detach()
        raise ValueError(f"descriptor {fd} is not a listening TCP socket")
    sock.set_inheritable(False)  # only the workers get it, as WORKER_FD
    return sock


def metrics_dir(state_dir: str, port: int) -> str:
    """A private directory for the workers' metric files, emptied at every start. Named by the
    bound port: two parents sharing a state directory cannot hold the same port."""
    path = os.path.join(state_dir, f"metrics-{port}")
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.mkdir(path, 0o700)
    return path


def metrics_registry(directory: str) -> CollectorRegistry:
    """The parent's registry: every worker's series, merged (counters summed)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def child_argv(env: str, config: str | None, python: str = sys.executable) -> list[str]:
    """The same twistd plugin in worker mode; setpriv --pdeathsig ends it if the parent is killed.
    `-P`: the working directory is not put on the import path (a `twisted/plugins` there would
    run); workers run in "/", so the configuration's path is made absolute."""
    prefix = [SETPRIV, "--pdeathsig", "TERM", "--"] if os.path.exists(SETPRIV) else []
    argv = [python, "-P", "-c", TWISTD, "--nodaemon", "--pidfile=", "--logger=privllm.workers.worker_log"]
    argv += ["privllm", "--env", env, "--role", "router", "--worker-fd", str(WORKER_FD)]
    return prefix + argv + (["--config", os.path.abspath(config)] if config else [])


SYSTEMD_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")  # the parent's sockets, not the workers'


def child_env(directory: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment (PRIVLLM_* overrides included) and the metrics directory, which
    prometheus_client reads when it is imported."""
    inherited = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in SYSTEMD_ENV}
    return {**inherited, METRICS_ENV: directory}


def worker_log() -> FileLogObserver:
    """A child's log observer (twistd --logger): lines without time, the parent adds its own."""
    return FileLogObserver(sys.stdout, lambda event: formatEventAsClassicLogText(event, formatTime=lambda _: "-"))


class _Ended(ProcessProtocol):
    """Passes everything to procmon's protocol, then reports the child's end with its pid."""

    def __init__(self, inner: IProcessProtocol, ended: Callable[[int], None]) -> None:
        self.inner = inner
        self.ended = ended
        self.pid = 0

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.inner.makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.inner.childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        self.inner.childConnectionLost(childFD)

    def processExited(self, reason: Failure) -> None:
        self.inner.processExited(reason)

    def processEnded(self, reason: Failure) -> None:
        self.inner.processEnded(reason)
        self.ended(self.pid)


@implementer(IReactorProcess, IReactorTime)
class InheritingReactor:
    """The reactor as procmon sees it: children inherit `fd` as WORKER_FD, and `ended(pid)` is
    called once each has ended. Time calls go to the real reactor, which provides both."""

    def __init__(self, reactor: IReactorProcess, fd: int, ended: Callable[[int], None]) -> None:
        self.reactor = reactor
        self.clock = IReactorTime(reactor)
        self.fd = fd
        self.ended = ended

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[AnyStr, AnyStr] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport:
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", **(childFDs or {}), WORKER_FD: self.fd}
        wrapper = _Ended(processProtocol, self.ended)
        process = self.reactor.spawnProcess(
            wrapper, executable, args, env=env, path=path, uid=uid, gid=gid, usePTY=usePTY, childFDs=fds
        )
        wrapper.pid = process.pid
        return process

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> IDelayedCall:
        return self.clock.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return self.clock.getDelayedCalls()


def forward_child_output(event: LogEvent) -> None:
    """A child's stdout is its own filtered log: pass its lines on. Its stderr (a traceback
    before logging started, say) could quote anything: withheld."""
    if "line" not in event or "stream" not in event:
        globalLogPublisher(event)
    elif event["stream"] == "stdout":
        log.info("{worker_line}", worker_line=str(event["line"]))
    else:
        log.warn("a worker wrote on stderr (withheld)")


RESTART_THRESHOLD = 30  # seconds
RESTART_MAX_DELAY = 60  # seconds


class WorkerMonitor(ProcessMonitor):
    """Keeps `count` router workers running on the parent's socket; a stop waits for all of them."""

    log = Logger(namespace="privllm.workers", observer=forward_child_output)  # type: ignore[arg-type]

    def __init__(
        self,
        reactor: IReactorProcess,
        sock: socket.socket,
        count: int,
        argv: list[str],
        env: dict[str, str],
        directory: str,
    ) -> None:
        super().__init__(reactor=InheritingReactor(reactor, sock.fileno(), self._ended))
        # A worker that ends within RESTART_THRESHOLD of its start (it could not start: an unsafe
        # Redis, a bad file) is restarted after a delay doubling from 1 s to RESTART_MAX_DELAY,
        # not at once in a loop; one that ran longer (a crash) is restarted at once.
        self.threshold = RESTART_THRESHOLD
        self.maxRestartDelay = RESTART_MAX_DELAY
        self.sock = sock
        self.directory = directory
        self._waiters: list[Deferred[None]] = []
        for n in range(count):
            self.addProcess(f"worker-{n}", argv, env=env, cwd="/")

    def _ended(self, pid: int) -> None:
        """procmon has scheduled its restart; retire its live gauges and release a waiting stop."""
        log.info("a router worker exited")
        mark_process_dead(pid, self.directory)
        if not self.running and not self.protocols:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """TERM to every worker (KILL after killTime); twistd waits until all have exited."""
        ended: Deferred[None] = Deferred()
        if self.protocols:
            self._waiters.append(ended)
        else:
            ended.callback(None)
        super().stopService()
        ended.addBoth(self._close)
        return ended

    def _close(self, result: Any) -> Any:
        self.sock.close()
        return result


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """A worker's listening endpoint: the parent's socket, inherited as `fd`.

    It listens only once `first` has fired (the first health probe of every node, bounded by
    its timeout): until then connections go to the other workers, so a restarted worker does
    not refuse chats with 503 while its nodes are still unknown to it. Cancelled before that
    (the worker stops), it never accepts."""

    def __init__(self, reactor: IReactorSocket, fd: int, first: Callable[[], Deferred[Any]]) -> None:
        self.reactor = reactor
        self.fd = fd
        self.first = first

    def listen(self, factory: Any) -> Deferred[Any]:
        # Cancelled (the worker stops before its probes are done): it never accepts, and gives
        # the inherited socket back.
        listening: Deferred[Any] = Deferred(lambda _: os.close(self.fd))

        def adopt(_: object) -> None:
            if not listening.called:
                listening.callback(self._adopt(factory))

        self.first().addBoth(adopt)
        return listening

    def _adopt(self, factory: Any) -> Any:
        os.set_blocking(self.fd, False)
        os.set_inheritable(self.fd, False)  # llama-server and others never get it
        sock = socket.socket(fileno=self.fd)  # its family (IPv4 or IPv6), read from the socket
        try:
            port = self.reactor.adoptStreamPort(self.fd, sock.family, factory)
        finally:
            sock.close()  # the reactor holds its own copy
        log.info("a router worker is accepting")
        return port
