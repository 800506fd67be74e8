"""Protocol v2's device proof: bound to its device, router key, encapsulation and time; small-order keys refused."""

from __future__ import annotations

import hmac
from hashlib import sha256

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.trial.unittest import TestCase

from ..protocol.device import PROOF_SIZE, DeviceProofError, device_proof, verify_device_proof

DEVICE = bytes(range(32))
ROUTER = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
ROUTER_PUBLIC = ROUTER.public_key().public_bytes_raw()
DEVICE_PUBLIC = X25519PrivateKey.from_private_bytes(DEVICE).public_key().public_bytes_raw()
ENC = bytes([7]) * 32
T = 1767229230

# X25519 points of small order (RFC 7748 section 6.1 and libsodium's blocklist): each gives an all-zero secret.
SMALL_ORDER = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def independent_proof(device: bytes, router_public: bytes, enc: bytes, timestamp: int) -> bytes:
    """The construction of docs/protocol.md written out with hmac and hashlib only (HKDF by RFC 5869)."""
    private = X25519PrivateKey.from_private_bytes(device)
    public = private.public_key().public_bytes_raw()
    shared = private.exchange(X25519PrivateKey.from_private_bytes(bytes(range(32, 64))).public_key())
    prk = hmac.new(b"\x00" * 32, shared, sha256).digest()
    key = hmac.new(prk, b"privllm/v2 device key" + public + router_public + b"\x01", sha256).digest()
    message = b"privllm/v2 device proof\x00" + enc + timestamp.to_bytes(8, "big")
    return hmac.new(key, message, sha256).digest()


class DeviceProof(TestCase):
    def test_a_proof_verifies_and_matches_the_written_construction(self) -> None:
        proof = device_proof(DEVICE, ROUTER_PUBLIC, ENC, T)
        self.assertEqual(len(proof), PROOF_SIZE)
        self.assertEqual(proof, independent_proof(DEVICE, ROUTER_PUBLIC, ENC, T))
        verify_device_proof(ROUTER, DEVICE_PUBLIC, ENC, T, proof)

    def test_each_bound_value_changed_fails(self) -> None:
        proof = device_proof(DEVICE, ROUTER_PUBLIC, ENC, T)
        other_device = X25519PrivateKey.generate().public_key().public_bytes_raw()
        cases = {
            "another encapsulation": (DEVICE_PUBLIC, bytes([8]) * 32, T, proof),
            "another time": (DEVICE_PUBLIC, ENC, T + 1, proof),
            "another device": (other_device, ENC, T, proof),
            "a flipped bit": (DEVICE_PUBLIC, ENC, T, bytes([proof[0] ^ 1]) + proof[1:]),
            "a short proof": (DEVICE_PUBLIC, ENC, T, proof[:16]),
            "an empty proof": (DEVICE_PUBLIC, ENC, T, b""),
        }
        for name, (device_public, enc, timestamp, given) in cases.items():
            with self.assertRaises(DeviceProofError, msg=name):
                verify_device_proof(ROUTER, device_public, enc, timestamp, given)
        with self.assertRaises(DeviceProofError, msg="another router key"):
            verify_device_proof(X25519PrivateKey.generate(), DEVICE_PUBLIC, ENC, T, proof)

    def test_a_small_order_device_key_is_refused(self) -> None:
        """Its shared secret is all zeros: anyone could make its proof and spend its limits."""
        for point in SMALL_ORDER:
            with self.assertRaises(DeviceProofError, msg=point.hex()):
                verify_device_proof(ROUTER, point, ENC, T, bytes(PROOF_SIZE))

    def test_a_second_spelling_of_a_key_is_refused(self) -> None:
        """The top bit set, or the value reduced mod p, names the same X25519 key: it would make
        one device several for the per-device limits."""
        high = DEVICE_PUBLIC[:31] + bytes([DEVICE_PUBLIC[31] | 0x80])
        shared = X25519PrivateKey.from_private_bytes(DEVICE).exchange(ROUTER.public_key())
        prk = hmac.new(b"\x00" * 32, shared, sha256).digest()
        key = hmac.new(prk, b"privllm/v2 device key" + high + ROUTER_PUBLIC + b"\x01", sha256).digest()
        proof = hmac.new(key, b"privllm/v2 device proof\x00" + ENC + T.to_bytes(8, "big"), sha256).digest()
        with self.assertRaises(DeviceProofError):  # its owner can prove it: only the spelling refuses it
            verify_device_proof(ROUTER, high, ENC, T, proof)
        p_plus_9 = (2**255 - 19 + 9).to_bytes(32, "little")  # the base point, spelled past p
        with self.assertRaises(DeviceProofError):
            verify_device_proof(ROUTER, p_plus_9, ENC, T, bytes(PROOF_SIZE))

    def test_bad_lengths_and_times_are_refused(self) -> None:
        for device_public in (b"", DEVICE_PUBLIC[:31], DEVICE_PUBLIC + b"\x00"):
            with self.assertRaises(DeviceProofError):
                verify_device_proof(ROUTER, device_public, ENC, T, bytes(PROOF_SIZE))
        for timestamp in (-1, 1 << 64):
            with self.assertRaises(DeviceProofError):
                device_proof(DEVICE, ROUTER_PUBLIC, ENC, timestamp)

    def test_the_error_is_a_protocol_error_with_its_wire_code(self) -> None:
        self.assertEqual(DeviceProofError.code, "decrypt_failed")
