"""Protocol v2's signed key configurations (privllm/protocol/v2/keys.py): hostile headers and
bodies first, then the round trip; the signature is checked with `cryptography` directly."""

from __future__ import annotations

import base64
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from twisted.trial.unittest import TestCase

from ..protocol.keyset import KEYSET_CLOCK_SKEW, MAX_KEYSET_LIFETIME, KeySetError, StaleKeySet
from ..protocol.ohttp.keyconfig import KeyConfig, encode_key_configs
from ..protocol.ohttp.suites import KEM_X25519
from ..protocol.v2.keys import (
    EXPIRES,
    ISSUED,
    MAX_KEY_CONFIGS_BYTES,
    SIGNATURE,
    SIGNING_KEY,
    sign_key_configs,
    verify_key_configs,
)
from .test_ohttp import AES128, CHACHA

IDENTITY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PIN = IDENTITY.public_key().public_bytes_raw()
CONFIGS = (
    KeyConfig(3, KEM_X25519, bytes(range(1, 33)), (CHACHA, AES128)),
    KeyConfig(4, KEM_X25519, bytes(range(2, 34)), (CHACHA, AES128)),
)
BODY = encode_key_configs(CONFIGS)
NOW = 1767229230


def signed(body: bytes = BODY, issued: int = NOW, expires: int = NOW + 3600) -> dict[bytes, bytes]:
    return sign_key_configs(IDENTITY, body, issued, expires)


def raw_signature(body: bytes, issued: int, expires: int, key: Ed25519PrivateKey = IDENTITY) -> bytes:
    """The signature as the design writes it, without privllm's code."""
    message = b"privllm/v2 ohttp-keys\x00" + struct.pack(">QQ", issued, expires) + body
    return base64.b64encode(key.sign(message))


class HostileKeyConfigs(TestCase):
    def assertRefused(self, headers: dict[bytes, bytes], body: bytes = BODY, pin: bytes = PIN) -> KeySetError:
        with self.assertRaises(KeySetError) as cm:
            verify_key_configs(headers, body, pin, NOW)
        return cm.exception

    def test_tampered_body(self) -> None:
        headers = signed()
        for i in range(len(BODY)):
            flipped = bytearray(BODY)
            flipped[i] ^= 0x01
            self.assertIn("bad signature", str(self.assertRefused(headers, bytes(flipped))))
        self.assertRefused(headers, BODY[:-1])
        self.assertRefused(headers, BODY + b"\x00")
        self.assertRefused(headers, b"")

    def test_tampered_times_or_signature(self) -> None:
        for name, value in ((ISSUED, NOW - 1), (EXPIRES, NOW + 3601)):
            self.assertIn("bad signature", str(self.assertRefused({**signed(), name: str(value).encode()})))
        signature = bytearray(base64.b64decode(signed()[SIGNATURE]))
        signature[0] ^= 0x80
        self.assertRefused({**signed(), SIGNATURE: base64.b64encode(bytes(signature))})

    def test_wrong_pin(self) -> None:
        other = Ed25519PrivateKey.generate()
        error = self.assertRefused(signed(), pin=other.public_key().public_bytes_raw())
        self.assertIn("other than the pinned identity", str(error))
        # Signed by another key that names itself: refused on the pin, before the signature.
        forged = sign_key_configs(other, BODY, NOW, NOW + 3600)
        self.assertIn("other than the pinned identity", str(self.assertRefused(forged)))
        # Signed by another key that names the pinned one: the signature fails.
        self.assertIn("bad signature", str(self.assertRefused({**forged, SIGNING_KEY: signed()[SIGNING_KEY]})))

    def test_stale_and_not_yet_valid(self) -> None:
        expired = signed(issued=NOW - 3600 - KEYSET_CLOCK_SKEW, expires=NOW - KEYSET_CLOCK_SKEW)
        with self.assertRaises(StaleKeySet) as cm:
            verify_key_configs(expired, BODY, PIN, NOW)
        self.assertIn("expired", str(cm.exception))
        future = signed(issued=NOW + KEYSET_CLOCK_SKEW + 1, expires=NOW + 3600)
        with self.assertRaises(StaleKeySet) as cm:
            verify_key_configs(future, BODY, PIN, NOW)
        self.assertIn("not valid yet", str(cm.exception))
        # Each end widened by the skew, as v1's rule.
        verify_key_configs(signed(issued=NOW + KEYSET_CLOCK_SKEW), BODY, PIN, NOW)
        verify_key_configs(signed(issued=NOW - 3600, expires=NOW - KEYSET_CLOCK_SKEW + 1), BODY, PIN, NOW)

    def test_lifetime_beyond_a_day_or_backwards(self) -> None:
        for issued, expires in ((NOW, NOW + MAX_KEYSET_LIFETIME + 1), (NOW, NOW), (NOW, NOW - 1)):
            headers = {
                **signed(),
                ISSUED: str(issued).encode(),
                EXPIRES: str(expires).encode(),
                SIGNATURE: raw_signature(BODY, issued, expires),
            }
            error = self.assertRefused(headers)
            self.assertNotIsInstance(error, StaleKeySet)
            self.assertIn("lifetime", str(error))
        verify_key_configs(signed(expires=NOW + MAX_KEYSET_LIFETIME), BODY, PIN, NOW)

    def test_bad_header_encodings(self) -> None:
        good = signed()
        for name in (SIGNING_KEY, ISSUED, EXPIRES, SIGNATURE):
            missing = {k: v for k, v in good.items() if k != name}
            self.assertIn("missing", str(self.assertRefused(missing)))
            repeated = good[name] + b", " + good[name]  # how HTTP combines a repeated field
            self.assertIn("malformed", str(self.assertRefused({**good, name: repeated})))
            for value in (b"", b" " + good[name], good[name] + b" ", b"\xff" + good[name]):
                self.assertIn("malformed", str(self.assertRefused({**good, name: value})), (name, value))
        for value in (b"+1767229230", b"01767229230", b"1767229230.0", b"1e9", b"-1", b"9" * 17, b"\xd9\xa1"):
            self.assertIn("malformed", str(self.assertRefused({**good, ISSUED: value})), value)
        self.assertIn("malformed", str(self.assertRefused({**good, ISSUED: str(2**53).encode()})))
        key = good[SIGNING_KEY]
        for value in (key.rstrip(b"="), key.replace(b"+", b"-").replace(b"/", b"_"), base64.b64encode(PIN[:31])):
            if value != key:
                self.assertIn("malformed", str(self.assertRefused({**good, SIGNING_KEY: value})), value)
        self.assertIn("malformed", str(self.assertRefused({**good, SIGNATURE: base64.b64encode(bytes(63))})))

    def test_malformed_configurations_under_a_good_signature(self) -> None:
        for body in (b"", b"\x00\x01\x03", BODY + BODY[:2], encode_key_configs(CONFIGS[:1]) * 2):
            headers = {**signed(), SIGNATURE: raw_signature(body, NOW, NOW + 3600)}
            self.assertIn("malformed key configurations", str(self.assertRefused(headers, body)))

    def test_too_large(self) -> None:
        body = bytes(MAX_KEY_CONFIGS_BYTES + 1)
        self.assertIn("too large", str(self.assertRefused(signed(body), body)))


class RoundTrip(TestCase):
    def test_signed_then_verified(self) -> None:
        verified = verify_key_configs(signed(), BODY, PIN, NOW)
        self.assertEqual((verified.configs, verified.issued, verified.expires), (CONFIGS, NOW, NOW + 3600))

    def test_header_names_in_any_case(self) -> None:
        lowered = {name.lower(): value for name, value in signed().items()}
        self.assertEqual(verify_key_configs(lowered, BODY, PIN, NOW).configs, CONFIGS)

    def test_signature_is_the_designed_one(self) -> None:
        """Checked with `cryptography` over the message built by hand, both ways."""
        headers = signed()
        message = b"privllm/v2 ohttp-keys\x00" + struct.pack(">QQ", NOW, NOW + 3600) + BODY
        Ed25519PublicKey.from_public_bytes(PIN).verify(base64.b64decode(headers[SIGNATURE]), message)
        self.assertEqual(headers[SIGNING_KEY], base64.b64encode(PIN))
        self.assertEqual((headers[ISSUED], headers[EXPIRES]), (str(NOW).encode(), str(NOW + 3600).encode()))
        by_hand = {**headers, SIGNATURE: raw_signature(BODY, NOW, NOW + 3600)}
        self.assertEqual(verify_key_configs(by_hand, BODY, PIN, NOW).configs, CONFIGS)

    def test_signing_refuses_nonsense_times(self) -> None:
        for issued, expires in ((NOW, NOW), (-1, NOW), (NOW, 2**53)):
            self.assertRaises(ValueError, sign_key_configs, IDENTITY, BODY, issued, expires)
