"""Build the privllm service tree from configuration; twistd's plugin hands straight to here.

Two roles share the package: the router (the public HTTPS endpoint that decrypts and
streams) and an inference node (mutual TLS in front of a node-local llama-server). A router
runs as one process, or (server.workers > 1) as a parent that holds the listening socket,
supervises the local llama-server (if any) and the workers, and serves their metrics; each
worker is a router of its own (`--worker-fd`, privllm.workers).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site

from . import logs
from .config import Config, ConfigError, load_config
from .harmony import vocabulary
from .harmony.dialect import HarmonyDialect
from .hygiene import HygieneError, harden
from .keys.files import KeyFileError, ensure_private_dir, read_secret, write_secret
from .keys.material import IDENTITY_KEY, ensure_dev_certificate, ensure_identity, load_identity
from .keys.service import KeyRingService
from .keys.store import KeyRingStore
from .node import NodeProxy
from .protocol.addresses import AddressPolicy
from .protocol.admission import Admission, PowGate
from .protocol.cors import CorsPolicy
from .protocol.pow import Challenges, DifficultyPolicy
from .protocol.v2.admission import AdmissionV2
from .state.gate import AdmissionGate
from .state.interface import AdmissionState, Limits
from .state.memory import MemoryState
from .state.service import SharedStateService
from .upstream.breaker import CircuitBreaker
from .upstream.contracts import Dialect
from .upstream.health import HealthMonitor
from .upstream.llama import LlamaServer
from .upstream.mtls import MutualTLSPolicy
from .upstream.openai_stream import ChatDialect
from .upstream.pool import Node, NodePool
from .upstream.supervisor import LlamaSupervisor, SupervisorError, default_binary, default_model, llama_arguments
from .web.app import RouterApp
from .web.chat import StreamSettings
from .web.limits import ClientAddress, ConnectionsPerAddress, ProxiedConnectionsPerAddress
from .web.llama_metrics import LlamaMetrics
from .web.metrics import RouterMetrics
from .web.proxied import proxied
from .web.request import PrivllmSite
from .web.status import StatusGauges
from .web.tls import ReloadingServerOptions, server_tls_options
from .workers import (
    AdoptedEndpoint,
    WorkerMonitor,
    child_argv,
    child_env,
    listening_socket,
    metrics_dir,
    metrics_registry,
    worker_count,
)

LLAMA_SOCKET = "llama.sock"
POW_KEY = "pow.key"
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


class StartError(Exception):
    """Anything that must stop the start with one clear line."""


def _tls_paths(config: Config) -> tuple[str, str]:
    if config.server.certificate:
        return config.server.certificate, config.server.private_key
    return ensure_dev_certificate(config.keys.state_dir, [config.server.host])


def _site(config: Config, resource: Any, reactor: Any) -> PrivllmSite:
    server = config.server
    return PrivllmSite(resource, server.max_body_bytes, reactor, server.idle_timeout, server.request_read_timeout)


def _pow_gate(config: Config, create: bool = True) -> PowGate | None:
    """Proof of work under stress; the secret is shared by routers on one state directory (a
    worker only reads it: its parent made it)."""
    if not config.pow.enabled:
        return None
    path = os.path.join(config.keys.state_dir, POW_KEY)
    if create and not os.path.lexists(path):
        write_secret(path, os.urandom(32))
    p = config.pow
    policy = DifficultyPolicy(p.stream_threshold, p.rate_threshold, p.base_difficulty, p.step, p.max_difficulty)
    return PowGate(Challenges(read_secret(path), p.ttl), policy, forced=p.forced)


def _limits(config: Config) -> Limits:
    rate, load, replay = config.rate_limit, config.load, config.replay
    return Limits(
        address_rate=rate.per_address_rate,
        address_burst=rate.per_address_burst,
        device_rate=rate.per_device_rate,
        device_burst=rate.per_device_burst,
        max_streams=load.max_streams,
        max_streams_per_device=load.max_streams_per_device,
        max_streams_per_address=load.max_streams_per_address,
        replay_window=replay.window,
        replay_future_skew=replay.future_skew,
        replay_max_entries=replay.max_entries,
        replay_max_per_address=replay.max_entries_per_address,
        pow_max_spent=config.pow.max_spent,
        max_addresses=rate.max_addresses,
        max_devices=rate.max_devices,
    )


def _server_tls(config: Config, client_ca: str = "", alpn: list[bytes] | None = None) -> ReloadingServerOptions:
    """Load and check the listener's certificate and key now; renewed files apply to new connections."""
    cert, key = _tls_paths(config)

    def build() -> Any:
        return server_tls_options(cert, key, config.server.tls_min_version, client_ca, alpn)

    return ReloadingServerOptions([cert, key, client_ca], build)


def _https_listener(
    config: Config,
    reactor: Any,
    site: Site,
    options: ReloadingServerOptions,
    public: bool = True,
    worker: tuple[int, Callable[[], Deferred[Any]]] | None = None,
) -> Any:
    # The per-address cap sits outside TLS, so a refused connection costs no handshake.
    tls = TLSMemoryBIOFactory(options, False, site)
    # Twisted's default TLS transport gathers the writes of one reactor turn into one TLS
    # record. Measured at 1,000 streams (router saturated): 88 us of CPU per sealed chunk
    # with it, 132 us without; at 200 streams, without it was about 5 % cheaper.
    server = config.server
    endpoint: Any = TCP4ServerEndpoint(reactor, server.port, interface=server.host)
    if worker is not None:  # the parent's socket, once the nodes' first probes are done
        endpoint = AdoptedEndpoint(reactor, *worker)
    if public and server.proxy_protocol:
        # Outermost first: the load balancers' allow-list, the PROXY header, the cap on its source, TLS.
        endpoint = proxied(endpoint, server.proxy_protocol_from)
        factory: ConnectionsPerAddress = ProxiedConnectionsPerAddress(
            tls, server.max_connections_per_address, _addresses(config)
        )
    else:
        # A node's only client is the router, which opens a connection per concurrent stream:
        # the per-address cap is for the public listener.
        factory = ConnectionsPerAddress(
            tls, server.max_connections_per_address if public else 1 << 30, _addresses(config)
        )
    return StreamServerEndpointService(endpoint, factory)


def _addresses(config: Config) -> AddressPolicy:
    return AddressPolicy(config.server.ipv6_prefix, config.server.trusted_proxies, config.ohttp.relays)


def _local_llama(config: Config, root: MultiService, spawn: bool = True) -> tuple[list[str], LlamaSupervisor | None]:
    """Dev: start and supervise llama-server on a socket in the state directory; return its URL and supervisor.
    A worker (`spawn` false) uses the one its parent supervises."""
    if not config.llama.spawn:
        return [], None
    socket = os.path.join(config.keys.state_dir, LLAMA_SOCKET)
    if not spawn:
        return [f"unix://{socket}"], None
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
    supervisor = LlamaSupervisor(args, socket)
    supervisor.setServiceParent(root)
    return [f"unix://{socket}"], supervisor


def _metrics_listener(config: Config, reactor: Any, registry: Any, root: MultiService, llama: list[str]) -> None:
    """/metrics: the router's own (none on a node); /llama/metrics: the local llama-server's,
    passed through when `llama.metrics` is on (`llama`: its URL, if there is one here)."""
    pass_llama = config.llama.metrics and bool(llama)
    if not config.metrics.enabled or (registry is None and not pass_llama):
        return
    resource = Resource()
    if registry is not None:
        resource.putChild(b"metrics", MetricsResource(registry=registry))
    if pass_llama:
        passed = Resource()
        client = LlamaServer(reactor, llama[0], config.backend.connect_timeout, keep=1)
        client.closed_on_stop().setServiceParent(root)
        passed.putChild(b"metrics", LlamaMetrics(client, config.backend.health_timeout))
        resource.putChild(b"llama", passed)
    endpoint = TCP4ServerEndpoint(reactor, config.metrics.port, interface=config.metrics.host)
    StreamServerEndpointService(endpoint, Site(resource)).setServiceParent(root)


def _identity(config: Config, create: bool) -> Any:
    if not config.is_dev and not config.keys.identity_key:
        raise StartError("config keys.identity_key: must be set in prod (the key the app pins)")
    ensure_private_dir(config.keys.state_dir)
    if config.keys.identity_key or create:
        return load_identity(config.keys.identity_key or ensure_identity(config.keys.state_dir))
    return load_identity(os.path.join(config.keys.state_dir, IDENTITY_KEY))  # a worker: its parent made it


def _workers(config: Config, reactor: Any, options: Options, count: int) -> MultiService:
    """server.workers > 1: this process supervises llama-server and the workers. It first builds,
    and never starts, the router a worker builds: every shared file (identity, certificate,
    proof of work key, key ring) is written before any worker starts, so workers only read
    them, and a setting a worker would refuse stops the start here with its one line. The
    parent serves no chat: the HPKE keys that build read are dropped at once."""
    Router(config, reactor).keys.ring.wipe()
    root = MultiService()
    local, _ = _local_llama(config, root)
    try:
        sock = listening_socket(config.server.host, config.server.port)
    except OSError as e:
        raise StartError(f"server.port: cannot listen: {e.strerror}") from e
    directory = metrics_dir(config.keys.state_dir, sock.getsockname()[1])
    _metrics_listener(config, reactor, metrics_registry(directory), root, local)
    argv = child_argv(options["env"], options["config"])
    WorkerMonitor(reactor, sock, count, argv, child_env(directory), directory).setServiceParent(root)
    return root


class Router:
    """The assembled router; tests reach its parts (metrics, key ring, nodes) through it.
    `worker_fd`: a worker of a parent (see privllm.workers), which listens and spawns for it."""

    def __init__(self, config: Config, reactor: Any, worker_fd: int | None = None) -> None:
        self.config = config
        self.service = MultiService()
        worker = worker_fd is not None
        self._monitors: list[HealthMonitor] = []
        # Every secret is loaded and checked before anything is written or started.
        identity = _identity(config, create=not worker)
        tls_options = _server_tls(config)
        backend = config.backend
        tls = None
        if backend.ca:
            tls = MutualTLSPolicy(backend.ca, backend.client_certificate, backend.client_key, backend.pins_by_host())
        store = KeyRingStore(config.keys.state_dir, config.keys.rotation_interval, config.keys.overlap)
        self.keys = KeyRingService(store, identity, reactor, config.keys.keyset_lifetime)
        self.keys.setServiceParent(self.service)

        self.metrics = RouterMetrics()
        local, supervisor = _local_llama(config, self.service, spawn=not worker)
        dialect = self._dialect(reactor)
        nodes = [self._node(url, reactor, tls, dialect) for url in local + list(backend.urls)]
        self.pool = NodePool(nodes, backend.balance, config.load.max_streams_per_node, config.load.queue_size)
        if supervisor is not None:  # its llama-server is the first node: down the moment it exits
            supervisor.on_exit = lambda: self.pool.mark_down(nodes[0])

        self._admission = Admission(
            self.keys.ring,
            config.server.max_body_bytes,
            config.replay.window,
            config.replay.future_skew,
            pow_gate=_pow_gate(config, create=not worker),
        )
        self._reactor, self._tls_options, self._worker_fd = reactor, tls_options, worker_fd
        if not worker:  # a parent of workers serves every worker's metrics
            _metrics_listener(config, reactor, self.metrics.registry, self.service, local)
        self._limits = limits = _limits(config)
        if config.state.backend == "redis":
            # The listener opens once Redis has answered and passed its checks.
            state_dir = config.keys.state_dir
            shared = SharedStateService(
                config.state, limits, state_dir, config.is_dev, reactor, self._listen, create_key=not worker
            )
            shared.setServiceParent(self.service)
        else:
            self._listen(MemoryState(limits))

    def _listen(self, state: AdmissionState) -> None:
        """Serve chats with this admission state: build the routes and open the listener."""
        config = self.config
        self.state = state
        settings = StreamSettings.from_config(config)
        self.app = RouterApp(
            clock=self._reactor,
            gate=AdmissionGate(self._admission, state, AdmissionV2(self._admission, self.keys.gateway_keys.accepting)),
            keyset=self.keys.keyset,
            ohttp_keys=self.keys.ohttp_keys,
            accept_v1=config.protocol.accept_v1,
            pool=self.pool,
            metrics=self.metrics,
            hsts_max_age=config.server.hsts_max_age,
            settings=settings,
            client_address=ClientAddress(_addresses(config), config.server.client_address_header),
            cors=CorsPolicy(config.server.cors_origins),
        )
        site = _site(config, self.app.resource(), self._reactor)
        adopt = None if self._worker_fd is None else (self._worker_fd, self._first_probes)
        listener = _https_listener(config, self._reactor, site, self._tls_options, worker=adopt)
        listener.setServiceParent(self.service)
        gauges = StatusGauges(
            self.metrics,
            self._reactor,
            self.keys.ring,
            state,
            self._limits.replay_max_entries,
            self._admission.pow_gate,
            self.pool.nodes,
        )
        gauges.setServiceParent(self.service)

    def _first_probes(self) -> Deferred[Any]:
        return DeferredList([monitor.check() for monitor in self._monitors], consumeErrors=True)

    def _dialect(self, reactor: Any) -> Dialect:
        if self.config.backend.mode == "chat":
            return ChatDialect()
        directory = self.config.harmony.vocabulary_dir or os.path.join(self.config.keys.state_dir, "tiktoken")
        try:
            encoding = vocabulary.encoding(directory)
        except vocabulary.VocabularyError as e:
            raise StartError(f"harmony: {e}") from e
        return HarmonyDialect(encoding, self.config.harmony.reasoning_effort, reactor, self.metrics.tool_calls.inc)

    def _node(self, url: str, reactor: Any, tls: MutualTLSPolicy | None, dialect: Dialect) -> Node:
        backend = self.config.backend
        metrics = self.metrics
        breaker = CircuitBreaker(
            backend.breaker_failures, backend.breaker_cooldown, lambda state: metrics.breaker_changed(url, state)
        )
        metrics.add_node(url, breaker.state)
        client = LlamaServer(reactor, url, backend.connect_timeout, tls, keep=self.config.load.max_streams_per_node)
        client.closed_on_stop().setServiceParent(self.service)
        node = Node(url, client, breaker, dialect=dialect)

        def changed(ready: bool) -> None:
            node.healthy = ready
            self.metrics.node_healthy.labels(url).set(1 if ready else 0)
            log.info("node {node} is {outcome}", node=url, outcome="up" if ready else "down")

        health = HealthMonitor(lambda: client.ready(backend.health_timeout), backend.health_interval, reactor, changed)
        health.setServiceParent(self.service)
        self._monitors.append(health)
        node.on_down = health.down
        return node


class InferenceNode:
    """An inference node: mutual TLS, a client certificate from the deployment CA naming an
    allowed client (the router), and a forward to the node-local llama-server."""

    def __init__(self, config: Config, reactor: Any) -> None:
        if not config.server.client_ca:
            raise StartError("config server.client_ca: a node requires client certificates from the deployment CA")
        if config.server.proxy_protocol:
            raise StartError("config server.proxy_protocol: for the router's public listener, not a node")
        self.service = MultiService()
        ensure_private_dir(config.keys.state_dir)
        local, _ = _local_llama(config, self.service)
        urls = local + [u for u in config.backend.urls if u.startswith("unix://")]
        if len(urls) != 1:
            raise StartError("config backend.urls: a node forwards to exactly one local llama-server (unix://)")
        llama = LlamaServer(reactor, urls[0], config.backend.connect_timeout, keep=config.llama.parallel)
        llama.closed_on_stop().setServiceParent(self.service)
        proxy = NodeProxy(llama, config.server.allowed_clients, config.backend.health_timeout)
        site = _site(config, proxy, reactor)
        options = _server_tls(config, config.server.client_ca, alpn=[b"http/1.1"])
        listener = _https_listener(config, reactor, site, options, public=False)
        listener.setServiceParent(self.service)
        _metrics_listener(config, reactor, None, self.service, urls)


def build(config: Config, role: str, reactor: Any, options: Options | None = None) -> MultiService:
    """One process (server.workers 1, or a node), a worker, or the parent of workers."""
    fd = options["worker-fd"] if options is not None else None
    count = worker_count(config.server.workers, config.state.backend == "redis")
    try:
        if role == "node":
            return InferenceNode(config, reactor).service
        if fd is None and count > 1 and options is not None:
            return _workers(config, reactor, options, count)
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
