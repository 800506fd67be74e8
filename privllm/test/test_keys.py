"""The key set (signing, verifying, choosing) and the key ring (rotation over simulated days)."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial.unittest import TestCase

from ..protocol import suite
from ..protocol.encoding import b64encode, canonical_json, dumps
from ..protocol.keyring import KeyRing
from ..protocol.keyset import (
    KEYSET_CLOCK_SKEW,
    MAX_KEYSET_LIFETIME,
    KeySetError,
    StaleKeySet,
    choose_key,
    keyset_document,
    verify_keyset,
)
from .helpers import NOW

DAY = 86400


LIFETIME = 3600


class KeySet(TestCase):
    def setUp(self) -> None:
        self.identity = Ed25519PrivateKey.generate()
        self.pin = self.identity.public_key().public_bytes_raw()
        self.ring = KeyRing([], DAY, 3600)
        self.ring.refresh(NOW, suite.new_private_key)
        self.doc = self.signed(self.ring.published(NOW), NOW, NOW + LIFETIME)

    def signed(self, keys: list, issued_at: int, expires: int) -> dict:
        return keyset_document(keys, issued_at, expires, self.identity)

    def test_verifies_against_pin(self) -> None:
        keyset = verify_keyset(dumps(self.doc), self.pin, NOW)
        self.assertEqual([k.status for k in keyset.keys], ["current", "next"])
        self.assertEqual((keyset.issued_at, keyset.expires), (NOW, NOW + LIFETIME))
        self.assertEqual(choose_key(keyset.keys, NOW).status, "current")

    def test_other_identity_rejected(self) -> None:
        other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        self.assertRaises(KeySetError, verify_keyset, dumps(self.doc), other, NOW)

    def test_any_change_breaks_signature(self) -> None:
        for mutate in (
            lambda d: d["keys"][0].update(not_after=d["keys"][0]["not_after"] + 1),
            lambda d: d["keys"].reverse(),
            lambda d: d.update(issued_at=NOW - 1),
            lambda d: d.update(expires=NOW + LIFETIME + 1),
            lambda d: d["keys"][1].update(status="current"),
        ):
            doc = json.loads(dumps(self.doc))
            mutate(doc)
            with self.assertRaises(KeySetError) as cm:
                verify_keyset(dumps(doc), self.pin, NOW)
            self.assertEqual(str(cm.exception), "bad signature")

    def test_garbage_rejected(self) -> None:
        for raw in (b"", b"[]", b"{}", b'{"signature":"AA=="}', b"\xff\xfe", b"[" * 1100 + b"]" * 1100):
            self.assertRaises(KeySetError, verify_keyset, raw, self.pin, NOW)

    def test_deep_or_odd_values_rejected_even_when_signed(self) -> None:
        """A signed set with wrong types or absurd values is refused, with KeySetError only."""
        good = self.ring.published(NOW)
        cases = [
            lambda d: d.update(keys=[]),
            lambda d: d.update(keys=d["keys"] * 5),
            lambda d: d["keys"][0].update(key_id=256),
            lambda d: d["keys"][0].update(key_id=-1),
            lambda d: d["keys"][0].update(not_before=10**30),
            lambda d: d["keys"][0].update(status="previous"),
            lambda d: d["keys"][0].update(extra=1),
            lambda d: d["keys"][0].update(not_after=d["keys"][0]["not_before"]),
            lambda d: d.update(keys=[[[[[]]]]]),
            lambda d: d.update(kem_id=33),
            lambda d: d.update(issued_at="soon"),
        ]
        for mutate in cases:
            doc = {k: v for k, v in self.signed(good, NOW, NOW + LIFETIME).items() if k != "signature"}
            mutate(doc)
            doc["signature"] = b64encode(self.identity.sign(canonical_json(doc)))
            self.assertRaises(KeySetError, verify_keyset, dumps(doc), self.pin, NOW)

    def test_freshness_rule(self) -> None:
        """Valid from issued_at to expires, both widened by the clock skew; the lifetime is bounded."""
        raw = dumps(self.doc)
        verify_keyset(raw, self.pin, NOW - KEYSET_CLOCK_SKEW)
        verify_keyset(raw, self.pin, NOW + LIFETIME + KEYSET_CLOCK_SKEW - 1)
        self.assertRaises(StaleKeySet, verify_keyset, raw, self.pin, NOW - KEYSET_CLOCK_SKEW - 1)
        self.assertRaises(StaleKeySet, verify_keyset, raw, self.pin, NOW + LIFETIME + KEYSET_CLOCK_SKEW)
        published = self.ring.published(NOW)
        for expires in (NOW, NOW - 1, NOW + MAX_KEYSET_LIFETIME + 1):
            doc = self.signed(published, NOW, expires)
            with self.assertRaises(KeySetError) as cm:
                verify_keyset(dumps(doc), self.pin, NOW)
            self.assertNotIsInstance(cm.exception, StaleKeySet)
        verify_keyset(dumps(self.signed(published, NOW, NOW + MAX_KEYSET_LIFETIME)), self.pin, NOW)

    def test_choose_key_falls_back_to_next(self) -> None:
        keys = verify_keyset(dumps(self.doc), self.pin, NOW).keys
        # a day later the current key's window has ended only after the overlap
        self.assertEqual(choose_key(keys, NOW + DAY + 3599).status, "current")
        self.assertEqual(choose_key(keys, NOW + DAY + 3600).status, "next")
        self.assertRaises(KeySetError, choose_key, keys, NOW - 10)


class Ring(TestCase):
    def test_rotation_over_days(self) -> None:
        ring = KeyRing([], DAY, 3600)
        self.assertTrue(ring.refresh(NOW, suite.new_private_key))
        self.assertFalse(ring.refresh(NOW + 60, suite.new_private_key))
        seen_ids = []
        for hour in range(0, 24 * 10, 1):
            now = NOW + hour * 3600
            ring.refresh(now, suite.new_private_key)
            published = ring.published(now)
            self.assertEqual([p.status for p in published], ["current", "next"])
            current, following = published
            self.assertTrue(current.not_before <= now < current.not_after)
            self.assertEqual(following.not_before, current.not_before + DAY)
            self.assertLessEqual(len(ring.keys), 3)
            self.assertEqual(len({k.key_id for k in ring.keys}), len(ring.keys))
            for p in published:
                self.assertIsNotNone(ring.accepting(p.key_id, now))
            seen_ids.append(current.key_id)
        self.assertEqual(len(set(seen_ids)), 10)

    def test_previous_key_accepted_until_not_after(self) -> None:
        ring = KeyRing([], DAY, 3600)
        ring.refresh(NOW, suite.new_private_key)
        first = ring.published(NOW)[0]
        later = NOW + DAY + 10
        ring.refresh(later, suite.new_private_key)
        self.assertNotEqual(ring.published(later)[0].key_id, first.key_id)
        self.assertIsNotNone(ring.accepting(first.key_id, later))
        self.assertIsNone(ring.accepting(first.key_id, first.not_after))
        self.assertIsNone(ring.accepting(255 if first.key_id != 255 else 254, NOW))

    def test_ids_wrap_without_reuse(self) -> None:
        ring = KeyRing([], 60, 0)
        now = NOW
        for _ in range(600):
            ring.refresh(now, suite.new_private_key)
            self.assertEqual(len({k.key_id for k in ring.keys}), len(ring.keys))
            now += 60
        self.assertTrue(all(0 <= k.key_id <= 255 for k in ring.keys))

    def test_long_downtime_starts_fresh(self) -> None:
        ring = KeyRing([], DAY, 3600)
        ring.refresh(NOW, suite.new_private_key)
        ring.refresh(NOW + 30 * DAY, suite.new_private_key)
        self.assertEqual(len(ring.published(NOW + 30 * DAY)), 2)
        self.assertTrue(all(k.not_after > NOW + 30 * DAY for k in ring.keys))

    def test_adopt_takes_the_file_key_when_only_the_id_matches(self) -> None:
        """Two processes that each made key 0 at the same second: the file's key wins, ours is dropped."""
        ours, theirs = KeyRing([], DAY, 3600), KeyRing([], DAY, 3600)
        ours.refresh(NOW, suite.new_private_key)
        theirs.refresh(NOW, suite.new_private_key)
        self.assertEqual([k.key_id for k in ours.keys], [k.key_id for k in theirs.keys])
        dropped, taken = ours.keys, theirs.keys
        ours.adopt(theirs)
        self.assertEqual(ours.keys, taken)
        self.assertFalse(any(hasattr(k, "secret") for k in dropped))
        self.assertEqual(theirs.keys, [], "the loaded ring is used up")
