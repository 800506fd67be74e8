"""Protocol v2's key configuration headers as a client meets them on the wire
(privllm/protocol/v2/keys.py): every near-valid spelling refused, including a repeated header
combined with a comma as HTTP combines fields (what privllm.client hands on), and a good
signature over configurations that do not parse. test_v2_keys.py holds the rest."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial.unittest import TestCase

from ..protocol.keyset import MAX_KEYSET_LIFETIME, KeySetError, StaleKeySet
from ..protocol.v2.keys import HEADERS, key_config, sign_key_configs, verify_key_configs

IDENTITY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PIN = IDENTITY.public_key().public_bytes_raw()
NOW = 1767229230
SIGNING_KEY, ISSUED, EXPIRES, SIGNATURE = HEADERS
CONFIGS = [key_config(3, bytes(range(1, 33))), key_config(4, bytes(range(2, 34)))]


def signed(issued: int = NOW, expires: int = NOW + 3600) -> tuple[bytes, dict[bytes, bytes]]:
    s = sign_key_configs(CONFIGS, issued, expires, IDENTITY)
    return s.body, dict(s.headers())


def signature_over(body: bytes, issued: int, expires: int) -> bytes:
    """Written from the design, not from privllm's code."""
    message = b"privllm/v2 ohttp-keys\x00" + issued.to_bytes(8, "big") + expires.to_bytes(8, "big") + body
    return base64.b64encode(IDENTITY.sign(message))


class Encodings(TestCase):
    def refused(self, body: bytes, headers: dict[bytes, bytes]) -> KeySetError:
        with self.assertRaises(KeySetError) as cm:
            verify_key_configs(body, headers, PIN, NOW)
        self.assertNotIsInstance(cm.exception, StaleKeySet)
        return cm.exception

    def test_repeated_blank_padded_or_binary_headers(self) -> None:
        body, good = signed()
        for name in HEADERS:
            for value in (
                good[name] + b", " + good[name],
                b"",
                b" " + good[name],
                good[name] + b" ",
                b"\xff" + good[name],
            ):
                self.refused(body, {**good, name: value})

    def test_times_in_one_spelling_only(self) -> None:
        body, good = signed()
        for value in (b"+1767229230", b"01767229230", b"1767229230.0", b"1e9", b"-1", b"9" * 17, "\u0661".encode()):
            self.refused(body, {**good, ISSUED: value})
        self.refused(body, {**good, ISSUED: str(2**53).encode()})

    def test_base64_in_one_spelling_only(self) -> None:
        body, good = signed()
        key = good[SIGNING_KEY]
        for value in (key.rstrip(b"="), key.replace(b"+", b"-").replace(b"/", b"_"), base64.b64encode(PIN[:31])):
            if value != key:
                self.refused(body, {**good, SIGNING_KEY: value})
        self.refused(body, {**good, SIGNATURE: base64.b64encode(bytes(63))})

    def test_lifetime_one_second_beyond_a_day_with_a_good_signature(self) -> None:
        body, good = signed()
        expires = NOW + MAX_KEYSET_LIFETIME + 1
        headers = {**good, EXPIRES: str(expires).encode(), SIGNATURE: signature_over(body, NOW, expires)}
        self.refused(body, headers)
        verify_key_configs(*signed(expires=NOW + MAX_KEYSET_LIFETIME), PIN, NOW)

    def test_configurations_that_do_not_parse_under_a_good_signature(self) -> None:
        body, good = signed()
        for bad in (b"", b"\x00\x01\x03", body + body[:2], body[: len(body) // 2] * 2):
            self.refused(bad, {**good, SIGNATURE: signature_over(bad, NOW, NOW + 3600)})
