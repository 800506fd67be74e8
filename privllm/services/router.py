"""
The router: the public HTTPS endpoint that decrypts and streams. One process (server.workers
1), or one worker of a parent that holds its listening socket (`worker_fd`, privllm.workers).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorSocket, IReactorTime, IStreamServerEndpoint

from ..config import Config
from ..config.listen import listener
from ..harmony import vocabulary
from ..harmony.dialect import HarmonyDialect
from ..keys.files import ensure_private_dir
from ..keys.material import IDENTITY_KEY, ensure_identity, load_identity, pow_key
from ..keys.service import KeyRingService
from ..keys.store import KeyRingStore
from ..protocol.admission import Admission, PowGate
from ..protocol.cors import CorsPolicy
from ..protocol.pow import Challenges, DifficultyPolicy
from ..protocol.v2.admission import AdmissionV2
from ..state.gate import AdmissionGate
from ..state.interface import AdmissionState, Limits
from ..state.memory import MemoryState
from ..state.service import SharedStateService
from ..upstream.breaker import CircuitBreaker
from ..upstream.contracts import Dialect
from ..upstream.health import HealthMonitor
from ..upstream.llama import LlamaServer
from ..upstream.mtls import MutualTLSPolicy
from ..upstream.openai_stream import ChatDialect
from ..upstream.pool import Node, NodePool
from ..web.app import RouterApp
from ..web.chat import StreamSettings
from ..web.limits import ClientAddress
from ..web.metrics import RouterMetrics
from ..web.status import NodeHealth, StatusGauges
from ..workers import AdoptedEndpoint
from .errors import StartError
from .listeners import addresses, endpoint, https_listener, metrics_listener, server_tls, site
from .local_llama import local_llama

__all__ = ["Router", "identity", "limits", "pow_gate"]


def pow_gate(config: Config, create: bool = True) -> PowGate | None:
    """Proof of work under stress; the secret is shared by routers on one state directory (a
    worker only reads it: its parent made it)."""
    if not config.pow.enabled:
        return None
    p = config.pow
    policy = DifficultyPolicy(p.stream_threshold, p.rate_threshold, p.base_difficulty, p.step, p.max_difficulty)
    return PowGate(Challenges(pow_key(config.keys.state_dir, create), p.ttl), policy, forced=p.forced)


def limits(config: Config) -> Limits:
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
        relay_rate=config.ohttp.relay_rate,
        relay_burst=config.ohttp.relay_burst,
        relay_streams=config.ohttp.relay_streams,
        relay_replay_entries=config.ohttp.relay_replay_entries,
    )


def identity(config: Config, create: bool) -> Any:
    if not config.is_dev and not config.keys.identity_key:
        raise StartError("config keys.identity_key: must be set in prod (the key the app pins)")
    ensure_private_dir(config.keys.state_dir)
    if config.keys.identity_key or create:
        return load_identity(config.keys.identity_key or ensure_identity(config.keys.state_dir))
    return load_identity(os.path.join(config.keys.state_dir, IDENTITY_KEY))  # a worker: its parent made it


class Router:
    """The assembled router; tests reach its parts (metrics, key ring, nodes) through it.
    `worker_fd`: a worker of a parent (see privllm.workers), which listens and spawns for it."""

    def __init__(self, config: Config, reactor: IReactorTime, worker_fd: int | None = None) -> None:
        self.config = config
        self.service = MultiService()
        worker = worker_fd is not None
        self._monitors: list[HealthMonitor] = []
        # Every secret is loaded and checked before anything is written or started.
        key = identity(config, create=not worker)
        tls_options = server_tls(config)
        backend = config.backend
        tls = None
        if backend.ca:
            tls = MutualTLSPolicy(backend.ca, backend.client_certificate, backend.client_key, backend.pins_by_host())
        store = KeyRingStore(config.keys.state_dir, config.keys.rotation_interval, config.keys.overlap)
        self.keys = KeyRingService(store, key, reactor, config.keys.keyset_lifetime)
        self.keys.setServiceParent(self.service)

        self.metrics = RouterMetrics()
        local, supervisor = local_llama(config, self.service, spawn=not worker)
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
            pow_gate=pow_gate(config, create=not worker),
        )
        self._reactor, self._tls_options = reactor, tls_options
        # Resolved now, so a listen setting that cannot work stops the start here, not once Redis answers.
        self._where: IStreamServerEndpoint = (
            AdoptedEndpoint(IReactorSocket(reactor), worker_fd, self._first_probes)  # once its nodes are probed
            if worker_fd is not None
            else endpoint(reactor, listener(config.server), "server.listen")
        )
        if not worker:  # a parent of workers serves every worker's metrics
            metrics_listener(config, reactor, self.metrics.registry, self.service, local)
        self._limits = limits(config)
        if config.state.backend == "redis":
            # The listener opens once Redis has answered and passed its checks.
            state_dir = config.keys.state_dir
            shared = SharedStateService(
                config.state, self._limits, state_dir, config.is_dev, reactor, self._listen, create_key=not worker
            )
            shared.setServiceParent(self.service)
        else:
            self._listen(MemoryState(self._limits))

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
            client_address=ClientAddress(addresses(config), config.server.client_address_header),
            cors=CorsPolicy(config.server.cors_origins),
        )
        routes = site(config, self.app.resource(), self._reactor)
        https_listener(config, self._reactor, routes, self._tls_options, where=self._where).setServiceParent(
            self.service
        )
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

    def _dialect(self, reactor: IReactorTime) -> Dialect:
        if self.config.backend.mode == "chat":
            return ChatDialect()
        directory = self.config.harmony.vocabulary_dir or os.path.join(self.config.keys.state_dir, "tiktoken")
        try:
            encoding = vocabulary.encoding(directory)
        except vocabulary.VocabularyError as e:
            raise StartError(f"harmony: {e}") from e
        return HarmonyDialect(encoding, self.config.harmony.reasoning_effort, reactor, self.metrics.tool_calls.inc)

    def _node(self, url: str, reactor: IReactorTime, tls: MutualTLSPolicy | None, dialect: Dialect) -> Node:
        backend = self.config.backend
        metrics = self.metrics
        breaker = CircuitBreaker(
            backend.breaker_failures, backend.breaker_cooldown, lambda state: metrics.breaker_changed(url, state)
        )
        metrics.add_node(url, breaker.state)
        client = LlamaServer(reactor, url, backend.connect_timeout, tls, keep=self.config.load.max_streams_per_node)
        client.closed_on_stop().setServiceParent(self.service)
        node = Node(url, client, breaker, dialect=dialect)
        probe = partial(client.ready, backend.health_timeout)
        health = HealthMonitor(probe, backend.health_interval, reactor, NodeHealth(node, metrics))
        health.setServiceParent(self.service)
        self._monitors.append(health)
        node.on_down = health.down
        return node
