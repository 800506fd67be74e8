"""
TLS options built by hand (the `ssl:` endpoint string cannot set ALPN or the minimum
version), re-read when the certificate files change so short-lived certificates can be
renewed without a restart: new connections get the new files, open streams are untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import TLSVersion
from zope.interface import implementer

from ..keys.tls import Reloading, load_chain, load_pair

__all__ = ["ALPN", "MIN_VERSIONS", "TLS12_CIPHERS", "ReloadingServerOptions", "server_tls_options"]

MIN_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}
ALPN = [b"h2", b"http/1.1"]
# TLS 1.2 as Mozilla's intermediate profile has it: ECDHE key exchange, AEAD ciphers only.
# Twisted's default list also offers CBC suites (testssl: "LUCKY13 potentially vulnerable").
# TLS 1.3 suites are a separate OpenSSL setting, left at its defaults (all AEAD).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def server_tls_options(
    cert_path: str,
    key_path: str,
    min_version: str,
    client_ca: str = "",
    alpn: list[bytes] | None = None,
) -> ssl.CertificateOptions:
    """With `client_ca`, a client certificate signed by that CA is required (mutual TLS)."""
    chain, key = load_pair(cert_path, key_path)
    extra: dict[str, Any] = {}
    if client_ca:
        extra = {
            "verify": True,
            "requireCertificate": True,
            "caCerts": [crypto.X509.from_cryptography(c) for c in load_chain(client_ca)],
        }
    # CertificateOptions disables TLS compression and prefers the server's cipher order.
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=MIN_VERSIONS[min_version],
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS),
        acceptableProtocols=ALPN if alpn is None else alpn,
        **extra,
    )


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingServerOptions:
    """Hands each new connection the latest certificate; open connections keep theirs."""

    def __init__(self, paths: list[str], build: Callable[[], ssl.CertificateOptions]) -> None:
        self._options = Reloading(paths, build)

    def getContext(self) -> SSL.Context:
        return self._options.current().getContext()

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return self._options.current().serverConnectionForTLS(protocol)
