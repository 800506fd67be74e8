"""Build the privllm service tree from configuration; twistd's plugin hands straight to here."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site

from . import logs
from .config import Config, ConfigError, load_config
from .hygiene import HygieneError, harden
from .keys.files import KeyFileError, ensure_private_dir
from .keys.material import ensure_dev_certificate, ensure_identity, load_identity
from .keys.service import KeyRingService
from .keys.store import KeyRingStore
from .protocol.admission import Admission
from .protocol.chat import ChatLimits
from .protocol.ratelimit import RateLimiter
from .protocol.replay import ReplayWindow
from .upstream.health import HealthMonitor
from .upstream.llama import LlamaServer
from .upstream.supervisor import LlamaSupervisor, SupervisorError, default_binary, default_model, llama_arguments
from .web.app import RouterApp
from .web.chat import StreamSettings
from .web.metrics import RouterMetrics
from .web.request import PrivllmSite
from .web.tls import server_tls_options

LLAMA_SOCKET = "llama.sock"
log = Logger()


class Options(usage.Options):
    optParameters = [
        ["env", None, "dev", "Built-in profile: dev or prod."],
        ["config", None, None, "TOML file overriding the profile."],
    ]


class StartError(Exception):
    """Anything that must stop the start with one clear line."""


def _tls_paths(config: Config) -> tuple[str, str]:
    if config.server.certificate:
        return config.server.certificate, config.server.private_key
    return ensure_dev_certificate(config.keys.state_dir, [config.server.host])


def _identity_path(config: Config) -> str:
    return config.keys.identity_key or ensure_identity(config.keys.state_dir)


def _backend(config: Config, root: MultiService) -> str:
    """The backend URL; in dev, also the supervised llama-server that serves it."""
    if not config.llama.spawn:
        return config.backend.url
    socket = os.path.join(config.keys.state_dir, LLAMA_SOCKET)
    llama = config.llama
    args = llama_arguments(
        llama.binary or default_binary(),
        llama.model or default_model(),
        socket,
        llama.parallel,
        llama.ctx_size,
        llama.threads,
        llama.metrics,
    )
    LlamaSupervisor(args, socket).setServiceParent(root)
    return config.backend.url or f"unix://{socket}"


class Router:
    """The assembled router; tests reach its parts (ports, metrics, key ring) through it."""

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.service = MultiService()
        ensure_private_dir(config.keys.state_dir)
        # Every secret is loaded and checked before anything is written or started.
        identity = load_identity(_identity_path(config))
        tls = server_tls_options(*_tls_paths(config), config.server.tls_min_version)
        store = KeyRingStore(config.keys.state_dir, config.keys.rotation_interval, config.keys.overlap)
        self.keys = KeyRingService(store, identity, reactor)
        self.keys.setServiceParent(self.service)

        self.metrics = RouterMetrics()
        self.upstream = LlamaServer(reactor, _backend(config, self.service), config.backend.connect_timeout)
        self.health = HealthMonitor(
            lambda: self.upstream.ready(config.backend.health_timeout),
            config.backend.health_interval,
            reactor,
            on_change=self.metrics.backend_ready.set,
        )
        self.health.setServiceParent(self.service)

        admission = Admission(
            self.keys.ring,
            ReplayWindow(config.replay.window, config.replay.max_entries),
            RateLimiter(
                config.rate_limit.per_address_rate, config.rate_limit.per_address_burst, config.rate_limit.max_addresses
            ),
            config.server.max_body_bytes,
        )
        self.app = RouterApp(
            clock=reactor,
            admission=admission,
            keyset=self.keys.keyset,
            upstream=self.upstream,
            backend_ready=lambda: self.health.ready,
            metrics=self.metrics,
            hsts_max_age=config.server.hsts_max_age,
            settings=StreamSettings(
                ChatLimits(**vars(config.chat)),
                config.server.keepalive_seconds,
                config.backend.idle_timeout,
                config.privacy,
            ),
        )
        site = PrivllmSite(self.app.resource(), config.server.max_body_bytes, reactor=reactor)
        self.https = StreamServerEndpointService(
            SSL4ServerEndpoint(reactor, config.server.port, tls, interface=config.server.host), site
        )
        self.https.setServiceParent(self.service)

        self.metrics_listener: StreamServerEndpointService | None = None
        if config.metrics.enabled:
            root = Resource()
            root.putChild(b"metrics", MetricsResource(registry=self.metrics.registry))  # type: ignore[arg-type]
            self.metrics_listener = StreamServerEndpointService(
                TCP4ServerEndpoint(reactor, config.metrics.port, interface=config.metrics.host), Site(root)
            )
            self.metrics_listener.setServiceParent(self.service)


def build_router(config: Config, reactor: Any) -> Router:
    try:
        return Router(config, reactor)
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
        router = build_router(config, reactor)
    except (ConfigError, StartError) as e:
        raise SystemExit(f"privllm: {e}") from None
    return router.service
