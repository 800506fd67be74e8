"""
The HPKE algorithms Oblivious HTTP may use here: an allow-list, with their sizes.

One KEM (X25519, the key protocol v1 already keeps) and one KDF (HKDF-SHA256); the three
AEADs of RFC 9180, since a client picks among those a key configuration offers (RFC 9458's
example picks AES-128-GCM). HPKE itself is pyhpke's, as in v1; the response AEAD and KDF
are `cryptography`'s primitives.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from .errors import Unsupported

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
    "AEAD_CHACHA20_POLY1305",
    "AEAD_KEY_SIZE",
    "AEAD_NONCE_SIZE",
    "AEAD_TAG_SIZE",
    "KDF_HKDF_SHA256",
    "KEM_PUBLIC_KEY_SIZE",
    "KEM_X25519",
    "SymmetricSuite",
    "check_kem",
    "hkdf_expand",
    "hkdf_extract",
    "hpke_suite",
]

KEM_X25519 = 0x0020  # DHKEM(X25519, HKDF-SHA256): Npk = Nenc = 32
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0003

KEM_PUBLIC_KEY_SIZE = {KEM_X25519: 32}  # Npk, which for these KEMs is also Nenc
AEAD_KEY_SIZE = {AEAD_AES_128_GCM: 16, AEAD_AES_256_GCM: 32, AEAD_CHACHA20_POLY1305: 32}  # Nk
AEAD_NONCE_SIZE = 12  # Nn of all three
AEAD_TAG_SIZE = 16  # Nt of all three

_PYHPKE_KEM = {KEM_X25519: KEMId.DHKEM_X25519_HKDF_SHA256}
_PYHPKE_KDF = {KDF_HKDF_SHA256: KDFId.HKDF_SHA256}
_PYHPKE_AEAD = {
    AEAD_AES_128_GCM: AEADId.AES128_GCM,
    AEAD_AES_256_GCM: AEADId.AES256_GCM,
    AEAD_CHACHA20_POLY1305: AEADId.CHACHA20_POLY1305,
}


def check_kem(kem_id: int) -> int:
    if kem_id not in KEM_PUBLIC_KEY_SIZE:
        raise Unsupported("KEM")
    return kem_id


@dataclass(frozen=True)
class SymmetricSuite:
    """One (KDF, AEAD) pair of a key configuration, both from the allow-list."""

    kdf_id: int
    aead_id: int

    def __post_init__(self) -> None:
        if self.kdf_id not in _PYHPKE_KDF or self.aead_id not in AEAD_KEY_SIZE:
            raise Unsupported("KDF or AEAD")

    @property
    def key_size(self) -> int:
        return AEAD_KEY_SIZE[self.aead_id]

    @property
    def entropy_size(self) -> int:
        """max(Nn, Nk): the response nonce and exported secret length (RFC 9458 section 4.4)."""
        return max(AEAD_NONCE_SIZE, self.key_size)

    def aead(self, key: bytes) -> AESGCM | ChaCha20Poly1305:
        if self.aead_id == AEAD_CHACHA20_POLY1305:
            return ChaCha20Poly1305(key)
        return AESGCM(key)


@functools.cache
def hpke_suite(kem_id: int, suite: SymmetricSuite) -> CipherSuite:
    return CipherSuite.new(_PYHPKE_KEM[kem_id], _PYHPKE_KDF[suite.kdf_id], _PYHPKE_AEAD[suite.aead_id])


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-SHA256 Extract (RFC 5869), the only KDF allowed."""
    mac = crypto_hmac.HMAC(salt, hashes.SHA256())
    mac.update(ikm)
    return mac.finalize()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)
