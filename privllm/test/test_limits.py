"""Replay window, rate limiter and the expiring set beneath them, driven by a fake clock."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ..protocol.errors import RATE_LIMITED, REPLAY, STALE, UNAVAILABLE, RequestRejected
from ..protocol.expiring import ExpiringSet
from ..protocol.ratelimit import Budget, RateLimiter
from ..protocol.replay import ENTRIES_PER_REQUEST, ReplayWindow
from ..protocol.slots import CountPerKey


def rid(i: int) -> str:
    return f"{i:022d}"


class Replay(TestCase):
    def rejected(self, f, *args) -> RequestRejected:
        with self.assertRaises(RequestRejected) as cm:
            f(*args)
        return cm.exception

    def test_freshness(self) -> None:
        w = ReplayWindow(60, 100, 5)
        w.check_fresh(1000, 1060)
        w.check_fresh(1005, 1000)
        self.assertEqual(self.rejected(w.check_fresh, 1000, 1061).rejection, STALE)
        self.assertEqual(self.rejected(w.check_fresh, 1006, 1000).rejection, STALE)  # ahead beyond the skew

    def test_far_future_timestamp_is_stale(self) -> None:
        """Today's +60 s would keep an entry two windows long; a few seconds of skew only."""
        w = ReplayWindow(60, 100, 5)
        self.assertEqual(self.rejected(w.check_fresh, 1000 + w.future_skew + 1, 1000).rejection, STALE)
        self.assertLess(w.longest_life, 2 * w.window)

    def test_limits(self) -> None:
        self.assertRaises(ValueError, ReplayWindow, 1, 100, 0)
        self.assertRaises(ValueError, ReplayWindow, 60, 100, 61)
        self.assertRaises(ValueError, ReplayWindow, 60, 100, 5, 1)
        self.assertRaises(ValueError, ReplayWindow, 60, 100, 5, 101)

    def test_replay_of_id_or_key(self) -> None:
        w = ReplayWindow(60, 100, 5)
        enc = os.urandom(32)
        w.remember("a" * 22, enc, 1000, 1000, "x")
        self.assertEqual(self.rejected(w.check_unseen, "a" * 22, os.urandom(32), 1001).rejection, REPLAY)
        self.assertEqual(self.rejected(w.check_unseen, "b" * 22, enc, 1001).rejection, REPLAY)
        w.check_unseen("b" * 22, os.urandom(32), 1001)

    def test_kept_exactly_while_acceptable(self) -> None:
        clock = Clock()
        clock.advance(1000)
        w = ReplayWindow(60, 100, 5)
        w.remember("a" * 22, b"e" * 32, 1000, 1000, "x")
        for _ in range(w.window):
            clock.advance(1)
            now = int(clock.seconds())
            w.check_fresh(1000, now)  # still fresh...
            self.assertEqual(self.rejected(w.check_unseen, "a" * 22, b"x" * 32, now).rejection, REPLAY)  # ...kept
        clock.advance(1)
        now = int(clock.seconds())
        self.assertEqual(self.rejected(w.check_fresh, 1000, now).rejection, STALE)
        w.check_unseen("a" * 22, b"x" * 32, now)
        self.assertEqual((len(w), w.owned("x")), (0, 0))

    def test_future_entry_kept_for_its_whole_window_only(self) -> None:
        w = ReplayWindow(60, 100, 5)
        w.remember("a" * 22, b"e" * 32, 1005, 1000, "x")
        w.check_fresh(1005, 1000 + w.longest_life - 1)
        self.assertEqual(
            self.rejected(w.check_unseen, "a" * 22, b"f" * 32, 1000 + w.longest_life - 1).rejection, REPLAY
        )
        w.check_unseen("b" * 22, b"f" * 32, 1000 + w.longest_life)
        self.assertEqual(len(w), 0)

    def test_one_address_fills_only_its_share(self) -> None:
        w = ReplayWindow(60, 100, 5, max_per_address=10)
        per_share = 10 // ENTRIES_PER_REQUEST
        for i in range(per_share):
            w.check_room("flood", 1000)
            w.remember(rid(i), os.urandom(32), 1000, 1000, "flood")
        refused = self.rejected(w.check_room, "flood", 1000)
        self.assertEqual((refused.rejection, refused.retry_after), (RATE_LIMITED, w.longest_life))
        w.check_room("honest", 1000)  # another address is unaffected
        w.remember(rid(99), os.urandom(32), 1000, 1000, "honest")
        w.check_room("flood", 1000 + w.window + 1)  # once its entries expire, room again
        self.assertEqual(w.owned("flood"), 0)

    def test_full_fails_closed_for_everyone(self) -> None:
        w = ReplayWindow(60, 10, 5, max_per_address=4)
        for i in range(5):
            w.remember(rid(i), os.urandom(32), 1000, 1000, f"address {i}")
        for address in ("address 0", "someone new"):
            self.assertEqual(self.rejected(w.check_room, address, 1000).rejection, UNAVAILABLE)
        self.assertEqual(self.rejected(w.remember, "z" * 22, os.urandom(32), 1000, 1000, "new").rejection, UNAVAILABLE)
        self.assertEqual(self.rejected(w.check_unseen, rid(0), os.urandom(32), 1000).rejection, REPLAY)  # all kept
        w.remember("z" * 22, os.urandom(32), 1061, 1061, "new")  # once the old ones expire, room again
        self.assertEqual(len(w), 2)

    def test_a_call_brings_its_own_share(self) -> None:
        """A relay's bigger share of the window, at the same address key as a client's."""
        w = ReplayWindow(60, 100, 5, max_per_address=2)
        w.remember(rid(1), os.urandom(32), 1000, 1000, "relay", share=6)
        self.assertEqual(self.rejected(w.check_room, "relay", 1000).rejection, RATE_LIMITED)  # its own share: full
        w.check_room("relay", 1000, 6)
        w.remember(rid(2), os.urandom(32), 1000, 1000, "relay", share=6)
        w.remember(rid(3), os.urandom(32), 1000, 1000, "relay", share=6)
        self.assertEqual(w.owned("relay"), 6)
        e = self.rejected(w.check_room, "relay", 1000, 6)
        self.assertEqual((e.rejection, e.retry_after), (RATE_LIMITED, w.longest_life))
        self.assertRaises(RequestRejected, w.remember, rid(4), os.urandom(32), 1000, 1000, "relay", 6)
        self.assertEqual(len(w), 6)
        w.remember(rid(5), os.urandom(32), 1000, 1000, "client")  # another address keeps its own

    def test_a_share_never_passes_the_whole_window(self) -> None:
        w = ReplayWindow(60, 4, 5, max_per_address=2)
        w.remember(rid(1), os.urandom(32), 1000, 1000, "relay", share=100)
        w.remember(rid(2), os.urandom(32), 1000, 1000, "relay", share=100)
        self.assertEqual(self.rejected(w.check_room, "relay", 1000, 100).rejection, UNAVAILABLE)

    def test_clock_jump(self) -> None:
        w = ReplayWindow(60, 100, 5)
        w.remember("a" * 22, b"e" * 32, 1000, 1000, "x")
        w.check_unseen("b" * 22, b"f" * 32, 10**9)
        self.assertEqual((len(w), w.owned("x")), (0, 0))


class Expiring(TestCase):
    def test_add_needs_room_and_is_unique(self) -> None:
        s = ExpiringSet(3, max_per_owner=2)
        s.add("a", 10, "o")
        self.assertRaises(ValueError, s.add, "a", 10, "p")
        s.add("b", 10, "o")
        self.assertTrue(s.full("o"))
        self.assertRaises(ValueError, s.add, "c", 10, "o")
        s.add("c", 11, "p")
        self.assertTrue(s.full("q"))
        s.purge(10)
        self.assertEqual((len(s), "c" in s, s.owned("o")), (1, True, 0))

    def test_a_call_brings_its_own_share(self) -> None:
        s = ExpiringSet(10, max_per_owner=1)
        s.add("a", 10, "o", share=3)
        self.assertTrue(s.full("o"))
        self.assertFalse(s.full("o", share=3))
        s.add("b", 10, "o", share=3)
        s.add("c", 10, "o", share=3)
        self.assertTrue(s.full("o", share=3))
        self.assertRaises(ValueError, s.add, "d", 10, "o", 3)
        self.assertEqual(s.owned("o"), 3)


class StreamsPerKey(TestCase):
    def test_a_call_brings_its_own_limit(self) -> None:
        streams = CountPerKey(1)
        self.assertTrue(streams.acquire("relay", 3))
        self.assertFalse(streams.room("relay"))  # the cap's own limit: full
        self.assertFalse(streams.acquire("relay"))
        self.assertTrue(streams.acquire("relay", 3) and streams.acquire("relay", 3))
        self.assertFalse(streams.room("relay", 3))
        self.assertFalse(streams.acquire("relay", 3))
        for _ in range(3):
            streams.release("relay")
        self.assertEqual((streams.held("relay"), len(streams)), (0, 0))


class GCRA(TestCase):
    def test_a_call_brings_its_own_budget(self) -> None:
        """A relay at the same key as a client: its bigger budget, then refused; a client's
        smaller one is already spent by the relay's debt."""
        limiter = RateLimiter(rate=1.0, burst=2, max_keys=10)
        relay = Budget(rate=4.0, burst=20)
        self.assertEqual([limiter.check("k", 0.0, relay) for _ in range(20)], [0] * 20)
        self.assertEqual(limiter.check("k", 0.0, relay), 1)
        self.assertGreaterEqual(limiter.check("k", 0.0), 1)
        self.assertEqual(limiter.check("k", 0.25, relay), 0)  # one interval of the relay's rate later
        self.assertEqual(limiter.check("other", 0.0), 0)
        self.assertEqual(limiter.check("other", 0.0), 0)
        self.assertEqual(limiter.check("other", 0.0), 1)  # its own budget: burst 2

    def test_a_budget_is_positive(self) -> None:
        for rate, burst in ((0.0, 1), (-1.0, 1), (1.0, 0)):
            self.assertRaises(ValueError, Budget, rate, burst)
        self.assertRaises(ValueError, RateLimiter, 0.0, 1, 1)
        self.assertRaises(ValueError, RateLimiter, 1.0, 1, 0)

    def test_burst_then_limit_then_recovery(self) -> None:
        clock = Clock()
        limiter = RateLimiter(rate=2.0, burst=5, max_keys=10)
        results = [limiter.check("a", clock.seconds()) for _ in range(7)]
        self.assertEqual(results[:5], [0] * 5)
        self.assertTrue(all(r >= 1 for r in results[5:]))
        self.assertEqual(limiter.check("b", clock.seconds()), 0)  # another key is unaffected
        clock.advance(0.5)
        self.assertEqual(limiter.check("a", clock.seconds()), 0)
        self.assertGreaterEqual(limiter.check("a", clock.seconds()), 1)

    def test_retry_after_is_honest(self) -> None:
        limiter = RateLimiter(rate=0.1, burst=1, max_keys=10)
        self.assertEqual(limiter.check("a", 0.0), 0)
        wait = limiter.check("a", 0.0)
        self.assertEqual(wait, 10)
        self.assertGreaterEqual(limiter.check("a", wait - 0.01), 1)
        self.assertEqual(limiter.check("a", float(wait)), 0)

    def test_table_bounded_and_expires(self) -> None:
        limiter = RateLimiter(rate=1.0, burst=2, max_keys=3)
        for key in "abc":
            self.assertEqual(limiter.check(key, 0.0), 0)
        self.assertEqual(limiter.check("d", 0.0), 1)  # full of live entries: fail closed
        self.assertEqual(len(limiter), 3)
        self.assertEqual(limiter.check("d", 5.0), 0)  # idle entries expired
        self.assertEqual(len(limiter), 1)

    def test_busy_key_does_not_keep_idle_ones(self) -> None:
        """The first key stays busy (and owes long); keys that came after it go idle: all of those go."""
        limiter = RateLimiter(rate=1.0, burst=20, max_keys=3)
        for _ in range(20):
            limiter.check("busy", 0.0)
        for key in "ab":
            self.assertEqual(limiter.check(key, 0.0), 0)
        self.assertEqual(limiter.check("new", 0.5), 1)  # full, nobody idle yet
        self.assertEqual(limiter.check("new", 2.0), 0)  # a and b idle since 1.0: freed behind the busy key
        self.assertEqual(len(limiter), 2)
