"""Protocol v2's signed key configurations: forged, foreign, stale and near-valid ones refused
first, then what a good one holds; and the gateway keys that follow the ring."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial.unittest import TestCase

from ..protocol import suite
from ..protocol.encoding import b64encode
from ..protocol.keyset import KEYSET_CLOCK_SKEW, KeySetError, StaleKeySet
from ..protocol.ohttp.keyconfig import encode_key_configs
from ..protocol.v2.keys import HEADERS, SUITES, GatewayKeys, key_config, sign_key_configs, verify_key_configs
from .helpers import NOW, ring

IDENTITY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PIN = IDENTITY.public_key().public_bytes_raw()
LIFETIME = 3600


def signed(
    issued: int = NOW, expires: int = NOW + LIFETIME, identity: Ed25519PrivateKey = IDENTITY
) -> tuple[bytes, dict[bytes, bytes]]:
    r = ring()
    configs = [key_config(k.key_id, k.public_key) for k in r.published(NOW)]
    s = sign_key_configs(configs, issued, expires, identity)
    return s.body, dict(s.headers())


class Hostile(TestCase):
    def refused(self, body: bytes, headers: dict[bytes, bytes], now: int = NOW) -> KeySetError:
        with self.assertRaises(KeySetError) as cm:
            verify_key_configs(body, headers, PIN, now)
        return cm.exception

    def test_signed_by_another_key(self) -> None:
        body, headers = signed(identity=Ed25519PrivateKey.generate())
        self.refused(body, headers)
        headers[HEADERS[0]] = b64encode(PIN).encode()  # naming the pin does not help
        self.refused(body, headers)

    def test_any_byte_changed(self) -> None:
        body, headers = signed()
        for i in range(len(body)):
            self.refused(body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :], headers)
        for name in (HEADERS[1], HEADERS[2]):
            changed = dict(headers)
            changed[name] = str(int(headers[name]) + 1).encode()
            self.refused(body, changed)

    def test_missing_or_misspelt_headers(self) -> None:
        body, headers = signed()
        for name in HEADERS:
            self.refused(body, {k: v for k, v in headers.items() if k != name})
        for name, value in ((HEADERS[1], b"0" + headers[HEADERS[1]]), (HEADERS[2], b"+1"), (HEADERS[3], b"!!")):
            self.refused(body, {**headers, name: value})

    def test_lifetime_beyond_a_day_or_backwards(self) -> None:
        self.refused(*signed(expires=NOW + 86401))
        self.refused(*signed(expires=NOW))

    def test_stale_by_v1s_rule(self) -> None:
        body, headers = signed()
        self.assertIsInstance(self.refused(body, headers, NOW + LIFETIME + KEYSET_CLOCK_SKEW), StaleKeySet)
        self.assertIsInstance(self.refused(body, headers, NOW - KEYSET_CLOCK_SKEW - 1), StaleKeySet)
        verify_key_configs(body, headers, PIN, NOW + LIFETIME + KEYSET_CLOCK_SKEW - 1)

    def test_a_good_signature_over_a_bad_body(self) -> None:
        s = sign_key_configs([key_config(1, bytes(32))], NOW, NOW + LIFETIME, IDENTITY)
        body = s.body + b"\x00"
        message = b"privllm/v2 ohttp-keys\x00" + NOW.to_bytes(8, "big") + (NOW + LIFETIME).to_bytes(8, "big") + body
        headers = dict(s.headers())
        headers[HEADERS[3]] = b64encode(IDENTITY.sign(message)).encode()
        self.refused(body, headers)


class Good(TestCase):
    def test_body_is_exactly_application_ohttp_keys_of_the_published_keys(self) -> None:
        r = ring()
        published = r.published(NOW)
        s = sign_key_configs([key_config(k.key_id, k.public_key) for k in published], NOW, NOW + LIFETIME, IDENTITY)
        configs = verify_key_configs(s.body, dict(s.headers()), PIN, NOW).configs
        self.assertEqual([(c.key_id, c.public_key) for c in configs], [(k.key_id, k.public_key) for k in published])
        self.assertEqual(s.body, encode_key_configs(list(configs)))
        self.assertTrue(all(c.suites == SUITES and c.kem_id == 0x0020 for c in configs))
        self.assertEqual([(x.kdf_id, x.aead_id) for x in SUITES], [(1, 3), (1, 1)])  # ChaCha20-Poly1305 first
        # the signature, checked by hand
        message = b"privllm/v2 ohttp-keys\x00" + NOW.to_bytes(8, "big") + (NOW + LIFETIME).to_bytes(8, "big") + s.body
        IDENTITY.public_key().verify(s.signature, message)


class Gateway(TestCase):
    def test_follows_the_ring(self) -> None:
        r = ring()
        keys = GatewayKeys(r)
        current = r.published(NOW)[0].key_id
        first = keys.accepting(current, NOW)[current]
        self.assertIs(keys.accepting(current, NOW)[current], first, "not rebuilt while the ring stands")
        self.assertEqual(keys.accepting((current + 100) % 256, NOW), {})
        r.rotate_now(NOW + 10, suite.new_private_key, revoke=True)
        self.assertEqual(keys.accepting(current, NOW + 10), {})
        new = r.published(NOW + 10)[0].key_id
        self.assertIs(keys.accepting(new, NOW + 10)[new].private_key, r.accepting(new, NOW + 10).secret)  # type: ignore[union-attr]
        keys.clear()
        r.wipe()
        self.assertEqual(keys.accepting(new, NOW + 10), {})
