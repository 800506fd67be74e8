"""Read the configuration, pick the role, assemble its service tree; twistd's plugin hands
straight to here. The parts are in privllm.services.

Two roles share the package: the router (the public HTTPS endpoint that decrypts and
streams) and an inference node (mutual TLS in front of a node-local llama-server). A router
runs as one process, or (server.workers > 1) as a parent that holds the listening socket and
supervises workers, each a router of its own (`--worker-fd`, privllm.workers).
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from . import logs
from .config import Config, ConfigError, load_config
from .hygiene import HygieneError, harden
from .keys.files import KeyFileError
from .services.errors import StartError
from .services.node import InferenceNode
from .services.parent import parent
from .services.router import Router
from .upstream.supervisor import SupervisorError
from .workers import worker_count

__all__ = ["Options", "build", "makeService"]
log = Logger()


class Options(usage.Options):
    optParameters = [
        ["env", None, "dev", "Built-in profile: dev or prod."],
        ["config", None, None, "TOML file overriding the profile."],
        ["role", None, "router", "router (the public endpoint) or node (mTLS in front of llama-server)."],
        ["worker-fd", None, None, "Internal: a router worker, given its parent's listening socket.", int],
    ]

    def postOptions(self) -> None:
        if self["role"] not in ("router", "node"):
            raise usage.UsageError("--role must be router or node")
        if self["worker-fd"] is not None and (self["role"] != "router" or self["worker-fd"] < 3):
            raise usage.UsageError("--worker-fd is for router workers, a descriptor from 3 up")


def build(config: Config, role: str, reactor: IReactorTime, options: Options | None = None) -> MultiService:
    """One process (server.workers 1, or a node), a worker, or the parent of workers."""
    fd = options["worker-fd"] if options is not None else None
    count = worker_count(config.server.workers, config.state.backend == "redis")
    try:
        if role == "node":
            return InferenceNode(config, reactor).service
        if fd is None and count > 1 and options is not None:
            return parent(config, reactor, options["env"], options["config"], count)
        return Router(config, reactor, fd).service
    except (KeyFileError, SupervisorError, ValueError) as e:
        raise StartError(str(e)) from e


def _harden(config: Config) -> None:
    try:
        warning = harden(config.process.require_mlock)
    except HygieneError as e:
        raise StartError(str(e)) from e
    if warning:
        log.warn("memory is not locked: {reason}", reason=warning)


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    logs.install()  # before twistd adds its output observers
    try:
        config = load_config(options["env"], options["config"])
        _harden(config)
        return build(config, options["role"], reactor, options)
    except (ConfigError, StartError) as e:
        raise SystemExit(f"privllm: {e}") from None
