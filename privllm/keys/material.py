"""Load or create the router's identity key, HPKE key ring, proof of work secret and (dev) TLS certificate."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..protocol import suite
from ..protocol.encoding import EncodingError, b64decode, b64encode, loads_bounded
from ..protocol.keyring import KEY_ID_SPACE, KeyRing, RingKey
from .files import KeyFileError, create_secret, fsync_dir, read_secret, write_secret
from .pki import self_signed
from .tls import private_pem, write_key_and_certificate

__all__ = [
    "IDENTITY_KEY",
    "IDENTITY_PUB",
    "KEYRING",
    "MAX_KEYRING_BYTES",
    "MAX_TIME",
    "POW_KEY",
    "POW_KEY_BYTES",
    "TLS_CERT",
    "TLS_KEY",
    "ensure_dev_certificate",
    "ensure_identity",
    "keyring_json",
    "keyring_path",
    "load_identity",
    "new_hpke_keypair",
    "parse_keyring",
    "pow_key",
    "save_keyring",
]

IDENTITY_KEY = "identity.key"
IDENTITY_PUB = "identity.pub"  # what a dev client pins
KEYRING = "hpke-keyring.json"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
POW_KEY = "pow.key"
POW_KEY_BYTES = 32
MAX_KEYRING_BYTES = 1 << 16  # a few keys take a few hundred bytes
MAX_TIME = 2**40  # Unix seconds: far beyond any key's life, far below any integer limit


def new_hpke_keypair() -> tuple[bytes, bytes]:
    """Raw bytes, for the client's device key file (the router's ring uses suite.new_private_key)."""
    pair = suite.SUITE.kem.derive_key_pair(os.urandom(32))
    return pair.private_key.to_private_bytes(), pair.public_key.to_public_bytes()


def load_identity(path: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(read_secret(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:  # TypeError: an encrypted key
        raise KeyFileError(f"identity key {path} is not an unencrypted PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"identity key {path} is not an Ed25519 key")
    return key


def ensure_identity(state_dir: str) -> str:
    """Dev: create the identity key once; return its path. Never overwrites an existing key."""
    path = os.path.join(state_dir, IDENTITY_KEY)
    if not os.path.lexists(path):
        key = Ed25519PrivateKey.generate()
        write_secret(path, private_pem(key))
    identity = load_identity(path)
    write_secret(
        os.path.join(state_dir, IDENTITY_PUB), (b64encode(identity.public_key().public_bytes_raw()) + "\n").encode()
    )
    return path


def pow_key(state_dir: str, create: bool = True) -> bytes:
    """The proof of work's secret, shared by the routers on one state directory. Made once and
    never over an existing one (of two routers starting together, both keep the first); a
    worker (`create` false) only reads what its parent made."""
    path = os.path.join(state_dir, POW_KEY)
    if create:
        try:
            create_secret(path, os.urandom(POW_KEY_BYTES))
            fsync_dir(state_dir)
        except FileExistsError:
            pass
    key = read_secret(path)
    if len(key) != POW_KEY_BYTES:
        raise KeyFileError(f"proof of work key {path} is not {POW_KEY_BYTES} bytes")
    return key


def keyring_json(ring: KeyRing) -> bytes:
    """The ring file's contents. The private keys pass through immutable bytes and strings here
    (cryptography's private_bytes_raw, base64, JSON), which Python frees without wiping: this
    runs only when the file changes (a new key, a rotation)."""
    keys = [
        {
            "key_id": k.key_id,
            "private_key": b64encode(k.secret.to_private_bytes()),
            "not_before": k.not_before,
            "not_after": k.not_after,
        }
        for k in ring.keys
    ]
    return json.dumps({"v": 1, "last_key_id": ring.last_key_id, "keys": keys}, indent=1).encode()


def _bounded_int(value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError("not an integer in range")
    return value


def _ring_key(item: Any) -> RingKey:
    secret = suite.private_key(b64decode(item["private_key"], suite.X25519_KEY_SIZE))
    return RingKey(
        _bounded_int(item["key_id"], 0, KEY_ID_SPACE - 1),
        secret,
        suite.public_bytes(secret),
        _bounded_int(item["not_before"], 0, MAX_TIME),
        _bounded_int(item["not_after"], 0, MAX_TIME),
    )


def keyring_path(state_dir: str) -> str:
    return os.path.join(state_dir, KEYRING)


def parse_keyring(raw: bytearray, interval: int, overlap: int, path: str) -> KeyRing:
    """The ring in a file's contents. json makes a str copy of them (and base64 a bytes copy of
    each key) that cannot be wiped; the caller wipes `raw`."""
    try:
        doc = loads_bounded(raw, MAX_KEYRING_BYTES, max_depth=3)
        if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("keys"), list):
            raise ValueError("unknown version")
        last = doc.get("last_key_id")
        if last is not None:
            last = _bounded_int(last, 0, KEY_ID_SPACE - 1)
        return KeyRing([_ring_key(item) for item in doc["keys"]], interval, overlap, last)
    except (ValueError, KeyError, TypeError, EncodingError) as e:
        raise KeyFileError(f"key ring {path} is corrupt; remove it deliberately to start a new one") from e


def save_keyring(state_dir: str, ring: KeyRing) -> bytes:
    """Write the ring file; return the SHA-256 of what was written."""
    data = keyring_json(ring)
    write_secret(keyring_path(state_dir), data)
    return hashlib.sha256(data).digest()


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
    write_key_and_certificate(key_path, key, cert_path, cert)
    return cert_path, key_path
