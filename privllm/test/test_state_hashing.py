"""The keyed names of the shared state, sans-IO."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from privllm.state.hashing import Namer

ROOT = bytes(range(32))


class NamerTests(SynchronousTestCase):
    def test_refuses_a_short_root_and_a_zero_rotation(self) -> None:
        self.assertRaises(ValueError, Namer, ROOT[:31], 60)
        self.assertRaises(ValueError, Namer, ROOT, 0)

    def test_a_name_hides_its_value_and_is_16_bytes(self) -> None:
        name = Namer(ROOT, 60).name(b"address", b"192.0.2.1", 7)
        self.assertEqual(len(bytes.fromhex(name)), 16)
        self.assertNotIn("192", name)

    def test_names_differ_by_kind_value_epoch_and_root(self) -> None:
        namer = Namer(ROOT, 60)
        base = namer.name(b"address", b"a", 1)
        self.assertEqual(base, Namer(ROOT, 60).name(b"address", b"a", 1))
        others = {
            namer.name(b"device", b"a", 1),
            namer.name(b"address", b"b", 1),
            namer.name(b"address", b"a", 2),
            Namer(bytes(32), 60).name(b"address", b"a", 1),
        }
        self.assertEqual(len(others), 4)
        self.assertNotIn(base, others)

    def test_kind_and_value_are_separated(self) -> None:
        namer = Namer(ROOT, 60)
        self.assertNotEqual(namer.name(b"ab", b"c", 1), namer.name(b"a", b"bc", 1))

    def test_the_previous_epochs_name_is_the_current_one_of_an_epoch_before(self) -> None:
        namer = Namer(ROOT, 60)
        written = namer.names(b"address", b"a", 119.9)[0]  # epoch 1
        self.assertEqual(namer.names(b"address", b"a", 120.0)[1], written)  # epoch 2 reads it
        self.assertNotIn(written, namer.names(b"address", b"a", 180.0))  # epoch 3 does not

    def test_epochs(self) -> None:
        namer = Namer(ROOT, 3600)
        self.assertEqual((namer.epoch(3599.9), namer.epoch(3600)), (0, 1))
