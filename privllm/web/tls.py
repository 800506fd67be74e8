"""Server TLS options built by hand: the `ssl:` endpoint string cannot set ALPN or the minimum version."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.ssl import TLSVersion

from ..keys.files import KeyFileError, read_secret

MIN_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}
ALPN = [b"h2", b"http/1.1"]


def load_chain(path: str) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        raise KeyFileError(f"cannot read certificate {path}: {e.strerror}") from e
    except ValueError as e:
        raise KeyFileError(f"certificate {path} is not PEM") from e
    return chain


def server_tls_options(cert_path: str, key_path: str, min_version: str) -> ssl.CertificateOptions:
    chain = load_chain(cert_path)
    try:
        key = serialization.load_pem_private_key(read_secret(key_path), password=None)
    except ValueError as e:
        raise KeyFileError(f"TLS key {key_path} is not a PEM private key") from e
    # CertificateOptions already disables TLS compression and session tickets' weak modes;
    # it uses Twisted's vetted cipher list (forward secrecy, AEAD first).
    return ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=MIN_VERSIONS[min_version],
        acceptableProtocols=ALPN,
    )
