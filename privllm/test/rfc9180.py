"""
Test equipment: an independent HPKE (RFC 9180) for our one suite, written from the RFC
with only `cryptography` primitives. It checks pyhpke and the protocol example, and lets
a test client speak protocol v1 without the library the router uses. Base mode and
AES-128-GCM too, for Oblivious HTTP (RFC 9458's example uses both).
"""

from __future__ import annotations

import hmac
from hashlib import sha256

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

KEM, KDF, AEAD = 0x0020, 0x0001, 0x0003
AEAD_AES_128_GCM = 0x0001
AEAD_CIPHERS: dict[int, tuple[type[AESGCM | ChaCha20Poly1305], int]] = {
    AEAD_AES_128_GCM: (AESGCM, 16),
    AEAD: (ChaCha20Poly1305, 32),
}  # id: (cipher, Nk)
KEM_SUITE_ID = b"KEM" + KEM.to_bytes(2, "big")
MODE_BASE = 0x00
MODE_AUTH = 0x02


def hpke_suite_id(aead: int) -> bytes:
    return b"HPKE" + KEM.to_bytes(2, "big") + KDF.to_bytes(2, "big") + aead.to_bytes(2, "big")


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
    def __init__(self, shared_secret: bytes, info: bytes, mode: int = MODE_AUTH, aead: int = AEAD) -> None:
        self.suite_id = hpke_suite_id(aead)
        self.cipher, key_size = AEAD_CIPHERS[aead]
        psk_id_hash = labeled_extract(b"", b"psk_id_hash", b"", self.suite_id)
        info_hash = labeled_extract(b"", b"info_hash", info, self.suite_id)
        context = bytes([mode]) + psk_id_hash + info_hash
        secret = labeled_extract(shared_secret, b"secret", b"", self.suite_id)
        self.key = labeled_expand(secret, b"key", context, key_size, self.suite_id)
        self.base_nonce = labeled_expand(secret, b"base_nonce", context, 12, self.suite_id)
        self.exporter_secret = labeled_expand(secret, b"exp", context, 32, self.suite_id)
        self.seq = 0

    def _nonce(self) -> bytes:
        seq = self.seq.to_bytes(12, "big")
        self.seq += 1
        return bytes(a ^ b for a, b in zip(self.base_nonce, seq, strict=True))

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        return self.cipher(self.key).encrypt(self._nonce(), plaintext, aad)

    def open(self, aad: bytes, ciphertext: bytes) -> bytes:
        return self.cipher(self.key).decrypt(self._nonce(), ciphertext, aad)

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return labeled_expand(self.exporter_secret, b"sec", exporter_context, length, self.suite_id)


def setup_auth_sender(pk_r: bytes, info: bytes, sk_s: bytes, sk_e: bytes) -> tuple[bytes, Context]:
    enc = public_key(sk_e)
    dh = _dh(sk_e, pk_r) + _dh(sk_s, pk_r)
    return enc, Context(_shared_secret(dh, enc + pk_r + public_key(sk_s)), info)


def setup_auth_receiver(enc: bytes, sk_r: bytes, info: bytes, pk_s: bytes) -> Context:
    dh = _dh(sk_r, enc) + _dh(sk_r, pk_s)
    return Context(_shared_secret(dh, enc + public_key(sk_r) + pk_s), info)


def setup_base_sender(pk_r: bytes, info: bytes, sk_e: bytes, aead: int) -> tuple[bytes, Context]:
    enc = public_key(sk_e)
    return enc, Context(_shared_secret(_dh(sk_e, pk_r), enc + pk_r), info, MODE_BASE, aead)


def setup_base_receiver(enc: bytes, sk_r: bytes, info: bytes, aead: int) -> Context:
    return Context(_shared_secret(_dh(sk_r, enc), enc + public_key(sk_r)), info, MODE_BASE, aead)
