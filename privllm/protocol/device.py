"""
Protocol v2: the device inside the encryption.

An Oblivious HTTP request (RFC 9458) is sealed in HPKE base mode, so unlike v1 (mode_auth, the
device key as sender key) nothing on the wire names the device. Per-device limits still need
a device that proves possession of its key, so the encapsulated request carries the device's
X25519 public key and a proof bound to this encapsulation:

    K     = HKDF-SHA256(ikm = X25519(sk_device, pk_R), salt = "",
                        info = "privllm/v2 device key" || pk_device || pk_R, 32 bytes)
    proof = HMAC-SHA256(K, "privllm/v2 device proof" || 0x00 || enc || u64be(timestamp))

pk_R is the router key the request was encapsulated to, enc its encapsulated key. Why this
construction: the device keeps the X25519 key it has in v1, so its limits carry across the
move to v2; like v1's mode_auth it is deniable (the router can compute the same proof, so it
proves nothing to a third party); it is bound to one encapsulation (enc is fresh per request
and the replay window's nonce) and to its time. A device key of small order would make the
shared secret all zeros and the proof forgeable by anyone: it is refused.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ProtocolError

__all__ = ["PROOF_SIZE", "DeviceProofError", "device_proof", "verify_device_proof"]

PROOF_SIZE = 32
_KEY_INFO = b"privllm/v2 device key"
_PROOF_LABEL = b"privllm/v2 device proof\x00"
_MAX_TIMESTAMP = (1 << 64) - 1
_P = 2**255 - 19


class DeviceProofError(ProtocolError):
    """The proof does not verify, or the device key cannot make one."""

    code = "decrypt_failed"


def _proof_key(shared: bytes, device_public: bytes, router_public: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO + device_public + router_public)
    return hkdf.derive(shared)


def _message(enc: bytes, timestamp: int) -> bytes:
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise DeviceProofError("timestamp out of range")
    return _PROOF_LABEL + enc + timestamp.to_bytes(8, "big")


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as e:  # a wrong length, or a key of small order (an all-zero secret)
        raise DeviceProofError("no shared secret with this key") from e


def _canonical(public: bytes) -> bool:
    """One spelling per key: X25519 ignores the top bit and reduces mod p, so 2**255 - 19 and
    more, or the top bit set, name a key another spelling names too, and one device would
    count as several for its limits."""
    return len(public) == 32 and int.from_bytes(public, "little") < _P


def device_proof(device_private: bytes, router_public: bytes, enc: bytes, timestamp: int) -> bytes:
    """The client's side: the proof for one encapsulation."""
    device = X25519PrivateKey.from_private_bytes(device_private)
    device_public = device.public_key().public_bytes_raw()
    key = _proof_key(_exchange(device, router_public), device_public, router_public)
    return hmac.new(key, _message(enc, timestamp), sha256).digest()


def verify_device_proof(
    router_private: X25519PrivateKey, device_public: bytes, enc: bytes, timestamp: int, proof: bytes
) -> None:
    """The router's side; raises DeviceProofError unless `proof` is the device's for `enc`."""
    if not _canonical(device_public):
        raise DeviceProofError("not a canonical X25519 public key")
    router_public = router_private.public_key().public_bytes_raw()
    key = _proof_key(_exchange(router_private, device_public), device_public, router_public)
    expected = hmac.new(key, _message(enc, timestamp), sha256).digest()
    if len(proof) != PROOF_SIZE or not hmac.compare_digest(expected, proof):
        raise DeviceProofError("the device proof does not verify")
