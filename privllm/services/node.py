"""An inference node: mutual TLS in front of a node-local llama-server."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime

from ..config import Config
from ..keys.files import ensure_private_dir
from ..node import NodeProxy
from ..upstream.llama import LlamaServer
from .errors import StartError
from .listeners import https_listener, metrics_listener, server_tls, site
from .local_llama import local_llama

__all__ = ["InferenceNode"]


class InferenceNode:
    """Mutual TLS, a client certificate from the deployment CA naming an allowed client (the
    router), and a forward to the node-local llama-server."""

    def __init__(self, config: Config, reactor: IReactorTime) -> None:
        if not config.server.client_ca:
            raise StartError("config server.client_ca: a node requires client certificates from the deployment CA")
        if config.server.proxy_protocol:
            raise StartError("config server.proxy_protocol: for the router's public listener, not a node")
        self.service = MultiService()
        ensure_private_dir(config.keys.state_dir)
        local, _ = local_llama(config, self.service)
        urls = local + [u for u in config.backend.urls if u.startswith("unix://")]
        if len(urls) != 1:
            raise StartError("config backend.urls: a node forwards to exactly one local llama-server (unix://)")
        llama = LlamaServer(reactor, urls[0], config.backend.connect_timeout, keep=config.llama.parallel)
        llama.closed_on_stop().setServiceParent(self.service)
        proxy = NodeProxy(llama, config.server.allowed_clients, config.backend.health_timeout)
        options = server_tls(config, config.server.client_ca, alpn=[b"http/1.1"])
        listener = https_listener(config, reactor, site(config, proxy, reactor), options, public=False)
        listener.setServiceParent(self.service)
        metrics_listener(config, reactor, None, self.service, urls)
