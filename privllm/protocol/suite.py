"""The one HPKE cipher suite and the labels of protocol v1."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey, KEMKeyInterface

__all__ = [
    "AEAD_ID",
    "AEAD_KEY_SIZE",
    "AEAD_NONCE_SIZE",
    "ED25519_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "FINAL_AAD",
    "KDF_ID",
    "KEM_ID",
    "POW_MAX_DIFFICULTY",
    "REQUEST_INFO",
    "RESPONSE_EXPORT_LABEL",
    "RESPONSE_NONCE_SIZE",
    "SUITE",
    "VERSION",
    "X25519_KEY_SIZE",
    "new_private_key",
    "private_key",
    "public_bytes",
    "public_key",
    "public_of",
    "request_aad",
]

VERSION = 1
KEM_ID = 0x0020  # DHKEM(X25519, HKDF-SHA256)
KDF_ID = 0x0001  # HKDF-SHA256
AEAD_ID = 0x0003  # ChaCha20-Poly1305

REQUEST_INFO = b"privllm/v1 request"
RESPONSE_EXPORT_LABEL = b"privllm/v1 response"
FINAL_AAD = b"final"

X25519_KEY_SIZE = 32
ED25519_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
RESPONSE_NONCE_SIZE = 32
AEAD_KEY_SIZE = 32
AEAD_NONCE_SIZE = 12

# The most proof of work (leading zero bits) a router may ask and a client will do: 2**24
# SHA-256 on average, about 12 s of one core for the CPython solver (docs/protocol.md). The
# demand is not authenticated, so this bounds what an interceptor can make a device spend.
POW_MAX_DIFFICULTY = 24

SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)


def private_key(raw: bytes) -> KEMKeyInterface:
    return SUITE.kem.deserialize_private_key(raw)


def new_private_key() -> KEMKeyInterface:
    """A fresh X25519 key made inside OpenSSL: its bytes never pass through Python memory."""
    return KEMKey.from_pyca_cryptography_key(X25519PrivateKey.generate())


def public_bytes(private: KEMKeyInterface) -> bytes:
    """The raw public key of a private key object."""
    return private.raw.public_key().public_bytes_raw()


def public_of(private: bytes) -> bytes:
    """The X25519 public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def public_key(raw: bytes) -> KEMKeyInterface:
    return SUITE.kem.deserialize_public_key(raw)


def request_aad(key_id: int, timestamp: int, request_id: str) -> bytes:
    return f"privllm/v1|{key_id}|{timestamp}|{request_id}".encode()
