"""The router's side of mutual TLS towards inference nodes: trust only the deployment CA,
present the router's certificate, check the node's name or address with service-identity,
and, where configured, the SHA-256 of the node's public key (an SPKI pin)."""

from __future__ import annotations

import hmac
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from ..keys.tls import Reloading, load_chain, load_pair, spki_pin
from .errors import UpstreamError

__all__ = ["MutualTLSPolicy", "PinMismatch"]


class PinMismatch(UpstreamError):
    """The node's certificate is valid but its key is not the pinned one."""

    code = "pin_mismatch"


def _client_material(ca: str, cert: str, key: str) -> tuple[ssl.Certificate, ssl.PrivateCertificate]:
    roots = load_chain(ca)
    chain, private_key = load_pair(cert, key)
    private = ssl.PrivateCertificate(crypto.X509.from_cryptography(chain[0]))
    private.privateKey = ssl.KeyPair(private_key)
    return ssl.Certificate(crypto.X509.from_cryptography(roots[0])), private


@implementer(IOpenSSLClientConnectionCreator)
class _Pinned:
    """Wraps Twisted's client connection creator; after the handshake (which has checked the
    CA and the name) the leaf's public key must match the pin, or the connection is failed."""

    def __init__(self, inner: Any, pin: str) -> None:
        self._inner = inner
        self._pin = pin

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = self._inner.clientConnectionForTLS(tls_protocol)

        def info(conn: SSL.Connection, where: int, ret: int) -> None:
            if where & SSL.SSL_CB_HANDSHAKE_DONE:
                peer = conn.get_peer_certificate()
                if peer is None or not hmac.compare_digest(spki_pin(peer), self._pin):
                    tls_protocol.failVerification(Failure(PinMismatch("node key does not match its pin")))

        connection.set_info_callback(info)
        return connection


@implementer(IPolicyForHTTPS)
class MutualTLSPolicy:
    def __init__(self, ca: str, client_certificate: str, client_key: str, pins: dict[str, str] | None = None) -> None:
        self._material = Reloading(
            [ca, client_certificate, client_key], lambda: _client_material(ca, client_certificate, client_key)
        )
        self._pins = pins or {}  # "host:port" -> base64 SPKI SHA-256

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """Asked at each new connection (privllm.endpoints), so renewed files apply to the next."""
        root, mine = self._material.current()
        # HTTP/1.1 only towards nodes: Twisted's Agent does not speak h2.
        creator = ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=root, clientCertificate=mine)
        pin = self._pins.get(f"{hostname.decode('ascii').lower()}:{port}")  # as Backend.pins_by_host keys them
        return _Pinned(creator, pin) if pin else creator
