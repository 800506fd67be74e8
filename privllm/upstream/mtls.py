"""The router's side of mutual TLS towards inference nodes: trust only the deployment CA,
present the router's certificate, check the node's name or address with service-identity."""

from __future__ import annotations

from typing import Any

from OpenSSL import crypto
from twisted.internet import ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from ..web.tls import Reloading, load_chain, load_key


def _client_material(ca: str, cert: str, key: str) -> tuple[ssl.Certificate, ssl.PrivateCertificate]:
    roots = load_chain(ca)
    chain = load_chain(cert)
    private = ssl.PrivateCertificate(crypto.X509.from_cryptography(chain[0]))
    private.privateKey = ssl.KeyPair(load_key(key))  # type: ignore[attr-defined]
    return ssl.Certificate(crypto.X509.from_cryptography(roots[0])), private


@implementer(IPolicyForHTTPS)
class MutualTLSPolicy:
    def __init__(self, ca: str, client_certificate: str, client_key: str) -> None:
        self._material = Reloading(
            [ca, client_certificate, client_key], lambda: _client_material(ca, client_certificate, client_key)
        )

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        root, mine = self._material.current()
        # HTTP/1.1 only towards nodes: Twisted's Agent does not speak h2.
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=root, clientCertificate=mine)
