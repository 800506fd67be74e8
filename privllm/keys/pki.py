"""
A small deployment CA for mutual TLS between the router and inference nodes.

Certificates are short-lived (a week by default): renew them on a timer and the daemons
pick the new files up for new connections. For production, step-ca can play this role
instead (docs/deployment.md); privllm only needs PEM files and the CA certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import ensure_private_dir, read_secret
from .tls import write_key_and_certificate

__all__ = ["CA_CERT", "CA_KEY", "create_ca", "issue", "self_signed"]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def self_signed(
    key: ec.EllipticCurvePrivateKey, common_name: str, days: int, extensions: list[tuple[x509.ExtensionType, bool]]
) -> x509.Certificate:
    """A self-signed certificate (a CA, or the dev listener's own), valid from five minutes ago."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def create_ca(directory: str, name: str = "privllm deployment CA", days: int = 3650) -> str:
    """Write ca.key (0600) and ca.crt into `directory` (0700); refuse to overwrite a CA."""
    ensure_private_dir(directory)
    key_path, cert_path = os.path.join(directory, CA_KEY), os.path.join(directory, CA_CERT)
    if os.path.lexists(key_path) or os.path.lexists(cert_path):
        raise FileExistsError(f"a CA already exists in {directory}")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(
        key,
        name,
        days,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),  # keyCertSign, cRLSign
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        ],
    )
    write_key_and_certificate(key_path, key, cert_path, cert)
    return cert_path


def issue(
    ca_directory: str,
    name: str,
    out_directory: str,
    dns: list[str] | None = None,
    ips: list[str] | None = None,
    hours: float = 168,
    start_hours_ago: float = 0.1,
) -> tuple[str, str]:
    """Issue `name`.crt and `name`.key (0600), usable as both TLS server and client certificate.
    The common name and a DNS name are `name` (a node's router checks it); `ips` become IP SANs."""
    ca_key = serialization.load_pem_private_key(read_secret(os.path.join(ca_directory, CA_KEY)), password=None)
    with open(os.path.join(ca_directory, CA_CERT), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in [name, *(dns or [])]]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips or []]
    start = _now() - datetime.timedelta(hours=start_hours_ago)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(hours=hours))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ensure_private_dir(out_directory)
    cert_path, key_path = os.path.join(out_directory, f"{name}.crt"), os.path.join(out_directory, f"{name}.key")
    write_key_and_certificate(key_path, key, cert_path, cert)
    return cert_path, key_path
