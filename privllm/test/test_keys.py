"""The key set (signing, verifying, choosing) and the key ring (rotation over simulated days)."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial.unittest import TestCase

from ..protocol import suite
from ..protocol.encoding import dumps
from ..protocol.keyring import KeyRing
from ..protocol.keyset import KeySetError, choose_key, keyset_document, verify_keyset
from .helpers import NOW

DAY = 86400


class KeySet(TestCase):
    def setUp(self) -> None:
        self.identity = Ed25519PrivateKey.generate()
        self.pin = self.identity.public_key().public_bytes_raw()
        self.ring = KeyRing([], DAY, 3600)
        self.ring.refresh(NOW, suite.new_private_key)
        self.doc = keyset_document(self.ring.published(NOW), NOW, self.identity)

    def test_verifies_against_pin(self) -> None:
        keys = verify_keyset(dumps(self.doc), self.pin)
        self.assertEqual([k.status for k in keys], ["current", "next"])
        self.assertEqual(choose_key(keys, NOW).status, "current")

    def test_other_identity_rejected(self) -> None:
        other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        self.assertRaises(KeySetError, verify_keyset, dumps(self.doc), other)

    def test_any_change_breaks_signature(self) -> None:
        for mutate in (
            lambda d: d["keys"][0].update(not_after=d["keys"][0]["not_after"] + 1),
            lambda d: d["keys"].reverse(),
            lambda d: d.update(issued_at=1),
            lambda d: d["keys"][1].update(status="current"),
        ):
            doc = json.loads(dumps(self.doc))
            mutate(doc)
            self.assertRaises(KeySetError, verify_keyset, dumps(doc), self.pin)

    def test_garbage_rejected(self) -> None:
        for raw in (b"", b"[]", b"{}", b'{"signature":"AA=="}'):
            self.assertRaises(KeySetError, verify_keyset, raw, self.pin)

    def test_choose_key_falls_back_to_next(self) -> None:
        keys = verify_keyset(dumps(self.doc), self.pin)
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
