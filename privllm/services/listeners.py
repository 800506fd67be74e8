"""
The listeners: the public HTTPS one (a router's or a node's) and the metrics one, each on the
endpoint its `listen` setting names (config/listen.py: tcp, tcp6, unix, or a socket systemd
passed), through serverFromString, so socket activation and IPv6 are a matter of configuration.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..config import Config
from ..config.listen import Listen, listener
from ..keys.material import ensure_dev_certificate
from ..protocol.addresses import AddressPolicy
from ..upstream.llama import LlamaServer
from ..web.limits import ConnectionsPerAddress, ProxiedConnectionsPerAddress
from ..web.llama_metrics import LlamaMetrics
from ..web.proxied import proxied
from ..web.request import PrivllmSite
from ..web.tls import ReloadingServerOptions, server_tls_options
from .errors import StartError

__all__ = [
    "ClosingListener",
    "addresses",
    "check_passed",
    "dev_hosts",
    "endpoint",
    "https_listener",
    "metrics_listener",
    "server_tls",
    "site",
]


def endpoint(reactor: IReactorTime, listen: Listen, key: str) -> IStreamServerEndpoint:
    """The endpoint for a checked `listen`; `key` names its setting in the error."""
    try:
        found: IStreamServerEndpoint = serverFromString(reactor, listen.endpoint())
    except (IndexError, KeyError):  # Twisted's systemd parser: no such passed socket
        which = f"index {listen.index}" if listen.index is not None else f"name {listen.name!r}"
        raise StartError(
            f"config {key}: systemd passed no socket with {which} (LISTEN_FDS, LISTEN_FDNAMES):"
            " start the service through its .socket unit"
        ) from None
    if isinstance(found, AdoptedStreamServerEndpoint):
        check_passed(found.fileno, found.addressFamily, listen.domain, key)
    return found


def check_passed(fd: int, family: int, domain: str, key: str) -> None:
    """A passed socket must be what `domain` says: Twisted reads each peer's address as that
    family, and an IPv6 socket read as IPv4 gives every client the same garbled address."""
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        raise StartError(f"config {key}: the passed descriptor is not a socket ({e.strerror})") from None
    with probe:
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if probe.family != family or probe.type != socket.SOCK_STREAM or not listening:
            found = {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}.get(
                probe.family, "other"
            )
            raise StartError(
                f"config {key}: systemd passed a socket of domain {found}, or not a listening stream socket,"
                f" where domain={domain} was named"
            )


class ClosingListener(StreamServerEndpointService):
    """A listener that, stopped, also aborts the connections it accepted (`factory` keeps them),
    so a stopped service holds no socket: a chat in flight ends as when its client leaves, and
    gives back what it held. The stop does not wait for them: the reactor closes each in its
    next turn (or the process's exit does)."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: WrappingFactory) -> None:
        super().__init__(endpoint, factory)
        self._connections = factory

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()
        for protocol in list(self._connections.protocols):
            protocol.transport.abortConnection()
        return stopped


def dev_hosts(config: Config) -> list[str]:
    """The names a dev certificate is made for: server.host, and the listen string's address."""
    hosts = [config.server.host]
    interface = listener(config.server).interface
    if interface and interface not in hosts:
        hosts.append(interface)
    return hosts


def server_tls(config: Config, client_ca: str = "", alpn: list[bytes] | None = None) -> ReloadingServerOptions:
    """Load and check the listener's certificate and key now; renewed files apply to new connections."""
    if config.server.certificate:
        cert, key = config.server.certificate, config.server.private_key
    else:
        cert, key = ensure_dev_certificate(config.keys.state_dir, dev_hosts(config))

    def build() -> Any:
        return server_tls_options(cert, key, config.server.tls_min_version, client_ca, alpn)

    return ReloadingServerOptions([cert, key, client_ca], build)


def site(config: Config, resource: Resource, reactor: IReactorTime) -> PrivllmSite:
    server = config.server
    return PrivllmSite(resource, server.max_body_bytes, reactor, server.idle_timeout, server.request_read_timeout)


def addresses(config: Config) -> AddressPolicy:
    return AddressPolicy(config.server.ipv6_prefix, config.server.trusted_proxies, config.ohttp.relays)


def https_listener(
    config: Config,
    reactor: IReactorTime,
    site: Site,
    options: ReloadingServerOptions,
    public: bool = True,
    where: IStreamServerEndpoint | None = None,
) -> ClosingListener:
    """On `where`, or by default on `server.listen`."""
    # The per-address cap sits outside TLS, so a refused connection costs no handshake.
    tls = TLSMemoryBIOFactory(options, False, site)
    # Twisted's default TLS transport gathers the writes of one reactor turn into one TLS
    # record. Measured at 1,000 streams (router saturated): 88 us of CPU per sealed chunk
    # with it, 132 us without; at 200 streams, without it was about 5 % cheaper.
    server = config.server
    if where is None:
        where = endpoint(reactor, listener(server), "server.listen")
    if public and server.proxy_protocol:
        # Outermost first: the load balancers' allow-list, the PROXY header, the cap on its source, TLS.
        where = proxied(where, server.proxy_protocol_from)
        factory: ConnectionsPerAddress = ProxiedConnectionsPerAddress(
            tls, server.max_connections_per_address, addresses(config)
        )
    else:
        # A node's only client is the router, which opens a connection per concurrent stream:
        # the per-address cap is for the public listener.
        factory = ConnectionsPerAddress(
            tls, server.max_connections_per_address if public else 1 << 30, addresses(config)
        )
    return ClosingListener(where, factory)


def metrics_listener(
    config: Config, reactor: IReactorTime, registry: Any, root: MultiService, llama: list[str]
) -> None:
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
    where = endpoint(reactor, listener(config.metrics), "metrics.listen")
    ClosingListener(where, WrappingFactory(Site(resource))).setServiceParent(root)
