"""
Test equipment: an independent HPKE (RFC 9180) for our one suite, written from the RFC
with only `cryptography` primitives. It checks pyhpke and the protocol example, and lets
a test client speak protocol v1 without the library the router uses.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEM, KDF, AEAD = 0x0020, 0x0001, 0x0003
KEM_SUITE_ID = b"KEM" + KEM.to_bytes(2, "big")
HPKE_SUITE_ID = b"HPKE" + KEM.to_bytes(2, "big") + KDF.to_bytes(2, "big") + AEAD.to_bytes(2, "big")
MODE_AUTH = 0x02


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or b"\x00" * 32, ikm, sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), sha256).digest()
        out += block
        counter += 1
    return out[:length]


def labeled_extract(salt: bytes, label: bytes, ikm: bytes, suite_id: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def labeled_expand(prk: bytes, label: bytes, info: bytes, length: int, suite_id: bytes) -> bytes:
    return _expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info, length)


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _dh(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))


def _shared_secret(dh: bytes, kem_context: bytes) -> bytes:
    prk = labeled_extract(b"", b"eae_prk", dh, KEM_SUITE_ID)
    return labeled_expand(prk, b"shared_secret", kem_context, 32, KEM_SUITE_ID)


class Context:
    def __init__(self, shared_secret: bytes, info: bytes) -> None:
        psk_id_hash = labeled_extract(b"", b"psk_id_hash", b"", HPKE_SUITE_ID)
        info_hash = labeled_extract(b"", b"info_hash", info, HPKE_SUITE_ID)
        context = bytes([MODE_AUTH]) + psk_id_hash + info_hash
        secret = labeled_extract(shared_secret, b"secret", b"", HPKE_SUITE_ID)
        self.key = labeled_expand(secret, b"key", context, 32, HPKE_SUITE_ID)
        self.base_nonce = labeled_expand(secret, b"base_nonce", context, 12, HPKE_SUITE_ID)
        self.exporter_secret = labeled_expand(secret, b"exp", context, 32, HPKE_SUITE_ID)
        self.seq = 0

    def _nonce(self) -> bytes:
        seq = self.seq.to_bytes(12, "big")
        self.seq += 1
        return bytes(a ^ b for a, b in zip(self.base_nonce, seq, strict=True))

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        return ChaCha20Poly1305(self.key).encrypt(self._nonce(), plaintext, aad)

    def open(self, aad: bytes, ciphertext: bytes) -> bytes:
        return ChaCha20Poly1305(self.key).decrypt(self._nonce(), ciphertext, aad)

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return labeled_expand(self.exporter_secret, b"sec", exporter_context, length, HPKE_SUITE_ID)


def setup_auth_sender(pk_r: bytes, info: bytes, sk_s: bytes, sk_e: bytes) -> tuple[bytes, Context]:
    enc = public_key(sk_e)
    dh = _dh(sk_e, pk_r) + _dh(sk_s, pk_r)
    return enc, Context(_shared_secret(dh, enc + pk_r + public_key(sk_s)), info)


def setup_auth_receiver(enc: bytes, sk_r: bytes, info: bytes, pk_s: bytes) -> Context:
    dh = _dh(sk_r, enc) + _dh(sk_r, pk_s)
    return Context(_shared_secret(dh, enc + public_key(sk_r) + pk_s), info)
