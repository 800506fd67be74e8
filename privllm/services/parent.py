"""
The parent of router workers (server.workers > 1): it holds the listening socket, supervises
the local llama-server (if any) and the workers, and serves their metrics; each worker is a
router of its own (`--worker-fd`, privllm.workers).

The socket is one the parent opens (`tcp:`, `tcp6:`) or one systemd passed it (`systemd:`
with domain INET or INET6); a UNIX socket is for one process only.
"""

from __future__ import annotations

import socket

from twisted.application.service import MultiService
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.interfaces import IReactorProcess, IReactorTime

from ..config import Config
from ..config.listen import Listen, listener
from ..workers import (
    WorkerMonitor,
    child_argv,
    child_env,
    inherited_socket,
    listening_socket,
    metrics_dir,
    metrics_registry,
)
from .errors import StartError
from .listeners import endpoint, metrics_listener
from .local_llama import local_llama
from .router import Router

__all__ = ["parent", "parent_socket"]


def parent_socket(listen: Listen, reactor: IReactorTime) -> socket.socket:
    """The socket every worker accepts on."""
    if listen.kind in ("tcp", "tcp6"):
        family, any_address = (socket.AF_INET6, "::") if listen.kind == "tcp6" else (socket.AF_INET, "0.0.0.0")
        try:
            return listening_socket(listen.interface or any_address, listen.port, family)
        except OSError as e:
            raise StartError(f"config server.listen: cannot listen: {e.strerror}") from e
    if listen.kind == "systemd" and listen.domain in ("INET", "INET6"):
        # Twisted reads systemd's LISTEN_PID and LISTEN_FDS once, at import, and clears them: its parser
        # finds the descriptor, which the parent then holds instead of adopting.
        passed = endpoint(reactor, listen, "server.listen")
        assert isinstance(passed, AdoptedStreamServerEndpoint)
        try:
            return inherited_socket(passed.fileno)
        except ValueError as e:
            raise StartError(f"config server.listen: {e}") from e
    raise StartError("config server.listen: more than one worker needs tcp:, tcp6:, or systemd: with INET or INET6")


def parent(config: Config, reactor: IReactorTime, env: str, config_path: str | None, count: int) -> MultiService:
    """It first builds, and never starts, the router a worker builds: every shared file
    (identity, certificate, proof of work key, key ring) is written before any worker starts,
    so workers only read them, and a setting a worker would refuse stops the start here with
    its one line. The parent serves no chat: the HPKE keys that build read are dropped at once."""
    Router(config, reactor).keys.ring.wipe()
    root = MultiService()
    local, _ = local_llama(config, root)
    sock = parent_socket(listener(config.server), reactor)
    directory = metrics_dir(config.keys.state_dir, sock.getsockname()[1])
    metrics_listener(config, reactor, metrics_registry(directory), root, local)
    argv = child_argv(env, config_path)
    WorkerMonitor(IReactorProcess(reactor), sock, count, argv, child_env(directory), directory).setServiceParent(root)
    return root
