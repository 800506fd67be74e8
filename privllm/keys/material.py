"""Load or create the router's identity key, HPKE key ring and (dev) TLS certificate."""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..protocol import suite
from ..protocol.encoding import EncodingError, b64decode, b64encode
from ..protocol.keyring import KeyRing, RingKey
from .files import KeyFileError, read_secret, write_secret
from .pki import self_signed

IDENTITY_KEY = "identity.key"
IDENTITY_PUB = "identity.pub"  # what a dev client pins
KEYRING = "hpke-keyring.json"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"


def new_hpke_keypair() -> tuple[bytes, bytes]:
    pair = suite.SUITE.kem.derive_key_pair(os.urandom(32))
    return pair.private_key.to_private_bytes(), pair.public_key.to_public_bytes()


def load_identity(path: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(read_secret(path), password=None)
    except ValueError as e:
        raise KeyFileError(f"identity key {path} is not a PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"identity key {path} is not an Ed25519 key")
    return key


def ensure_identity(state_dir: str) -> str:
    """Dev: create the identity key once; return its path. Never overwrites an existing key."""
    path = os.path.join(state_dir, IDENTITY_KEY)
    if not os.path.lexists(path):
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_secret(path, pem)
    identity = load_identity(path)
    write_secret(
        os.path.join(state_dir, IDENTITY_PUB), (b64encode(identity.public_key().public_bytes_raw()) + "\n").encode()
    )
    return path


def _ring_to_json(ring: KeyRing) -> bytes:
    keys = [
        {
            "key_id": k.key_id,
            "private_key": b64encode(bytes(k.private_key)),
            "not_before": k.not_before,
            "not_after": k.not_after,
        }
        for k in ring.keys
    ]
    return json.dumps({"v": 1, "last_key_id": ring.last_key_id, "keys": keys}, indent=1).encode()


def _ring_key(item: Any) -> RingKey:
    private = b64decode(item["private_key"], suite.X25519_KEY_SIZE)
    public = suite.public_of(private)
    return RingKey(int(item["key_id"]), bytearray(private), public, int(item["not_before"]), int(item["not_after"]))


def load_keyring(state_dir: str, interval: int, overlap: int) -> KeyRing:
    path = os.path.join(state_dir, KEYRING)
    if not os.path.lexists(path):
        return KeyRing([], interval, overlap)
    try:
        doc = json.loads(read_secret(path))
        if doc.get("v") != 1:
            raise ValueError("unknown version")
        last = doc.get("last_key_id")
        if last is not None and (not isinstance(last, int) or not 0 <= last <= 255):
            raise ValueError("bad last_key_id")
        return KeyRing([_ring_key(item) for item in doc["keys"]], interval, overlap, last)
    except (ValueError, KeyError, TypeError, AttributeError, EncodingError) as e:
        raise KeyFileError(f"key ring {path} is corrupt; remove it deliberately to start a new one") from e


def save_keyring(state_dir: str, ring: KeyRing) -> None:
    write_secret(os.path.join(state_dir, KEYRING), _ring_to_json(ring))


def ensure_dev_certificate(state_dir: str, hosts: list[str]) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for the dev listener; the dev client trusts exactly it."""
    cert_path, key_path = os.path.join(state_dir, TLS_CERT), os.path.join(state_dir, TLS_KEY)
    if os.path.lexists(cert_path) and os.path.lexists(key_path):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    extensions = [(x509.SubjectAlternativeName(alt), False), (x509.BasicConstraints(ca=True, path_length=0), True)]
    cert = self_signed(key, "privllm dev", 365, extensions)
    write_secret(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_secret(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
