"""
TLS material shared by every side that speaks TLS (the web listener, the router's mutual TLS
towards nodes, privllm-admin): certificate chains and keys written to and read from PEM files, the SPKI pin of
a certificate's key, and a value rebuilt when its files change so renewed certificates apply to
new connections without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import crypto
from twisted.logger import Logger

from .files import KeyFileError, read_secret, write_secret


def private_pem(key: PrivateKeyTypes) -> bytes:
    """A private key as unencrypted PKCS#8 PEM: the one form privllm writes (and load_key reads)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key_and_certificate(key_path: str, key: PrivateKeyTypes, cert_path: str, cert: x509.Certificate) -> None:
    """The key first, as a secret (0600); then its certificate, public (0644)."""
    write_secret(key_path, private_pem(key))
    write_secret(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


__all__ = ["Reloading", "load_chain", "load_pair", "private_pem", "spki_pin", "write_key_and_certificate"]

log = Logger()


def load_chain(path: str) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        raise KeyFileError(f"cannot read certificate {path}: {e.strerror}") from e
    except ValueError as e:
        raise KeyFileError(f"certificate {path} is not PEM") from e
    return chain


def _private_key(path: str) -> Any:
    try:
        return serialization.load_pem_private_key(read_secret(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:  # TypeError: an encrypted key
        raise KeyFileError(f"TLS key {path} is not an unencrypted PEM private key") from e


def load_pair(cert_path: str, key_path: str) -> tuple[list[x509.Certificate], crypto.PKey]:
    """A certificate chain and the leaf's key. Each half parses alone; a key that is not the
    leaf's (a renewal half done) would show only when a TLS context is made, failing every
    connection, so it is refused here, where a reload keeps the last good pair."""
    chain, key = load_chain(cert_path), _private_key(key_path)
    if _spki(chain[0].public_key()) != _spki(key.public_key()):
        raise KeyFileError(f"TLS key {key_path} is not the key of certificate {cert_path}")
    return chain, crypto.PKey.from_cryptography_key(key)


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def spki_pin(certificate: Any) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a pyOpenSSL or cryptography certificate."""
    cert = certificate.to_cryptography() if hasattr(certificate, "to_cryptography") else certificate
    return base64.b64encode(hashlib.sha256(_spki(cert.public_key())).digest()).decode()


class Reloading:
    """Rebuild a value from files when any of their modification times changes."""

    def __init__(self, paths: list[str], build: Callable[[], Any]) -> None:
        self._paths = [p for p in paths if p]
        self._build = build
        self._stamp = self._stamps()
        self.value = build()

    def _stamps(self) -> tuple[int, ...]:
        return tuple(os.stat(p).st_mtime_ns for p in self._paths)

    def current(self) -> Any:
        """The value, rebuilt if the files changed. A renewal half written or broken keeps the
        last good value, with one logged line per change of the files; it is tried again only
        when they change again (not on every connection)."""
        try:
            stamp = self._stamps()
        except OSError:
            return self.value  # a file renamed into place this moment: the next call sees it
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.value = self._build()
            except (OSError, KeyFileError) as e:
                log.warn("renewed TLS files not used, the last good ones are: {reason}", reason=str(e))
        return self.value
