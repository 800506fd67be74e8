"""Replay window and rate limiter, driven by a fake clock."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ..protocol.errors import REPLAY, STALE, UNAVAILABLE, RequestRejected
from ..protocol.ratelimit import RateLimiter
from ..protocol.replay import ReplayWindow


class Replay(TestCase):
    def rejected(self, f, *args) -> object:
        with self.assertRaises(RequestRejected) as cm:
            f(*args)
        return cm.exception.rejection

    def test_freshness(self) -> None:
        w = ReplayWindow(60, 100)
        w.check_fresh(1000, 1060)
        w.check_fresh(1060, 1000)
        self.assertEqual(self.rejected(w.check_fresh, 1000, 1061), STALE)
        self.assertEqual(self.rejected(w.check_fresh, 1061, 1000), STALE)

    def test_window_minimum(self) -> None:
        self.assertRaises(ValueError, ReplayWindow, 1, 100)

    def test_replay_of_id_or_key(self) -> None:
        w = ReplayWindow(60, 100)
        enc = os.urandom(32)
        w.remember("a" * 22, enc, 1000, 1000)
        self.assertEqual(self.rejected(w.check_unseen, "a" * 22, os.urandom(32), 1001), REPLAY)
        self.assertEqual(self.rejected(w.check_unseen, "b" * 22, enc, 1001), REPLAY)
        w.check_unseen("b" * 22, os.urandom(32), 1001)

    def test_kept_exactly_while_acceptable(self) -> None:
        clock = Clock()
        clock.advance(1000)
        w = ReplayWindow(60, 100)
        w.remember("a" * 22, b"e" * 32, 1000, 1000)
        for _ in range(60):
            clock.advance(1)
            now = int(clock.seconds())
            w.check_fresh(1000, now)  # still fresh...
            self.assertEqual(self.rejected(w.check_unseen, "a" * 22, b"x" * 32, now), REPLAY)  # ...so remembered
        clock.advance(1)
        now = int(clock.seconds())
        self.assertEqual(self.rejected(w.check_fresh, 1000, now), STALE)
        w.check_unseen("a" * 22, b"x" * 32, now)
        self.assertEqual(len(w), 0)

    def test_full_fails_closed(self) -> None:
        w = ReplayWindow(60, 10)
        for i in range(5):
            w.remember(f"{i:022d}", os.urandom(32), 1000, 1000)
        self.assertEqual(self.rejected(w.remember, "z" * 22, os.urandom(32), 1000, 1000), UNAVAILABLE)
        self.assertEqual(self.rejected(w.check_unseen, f"{0:022d}", os.urandom(32), 1000), REPLAY)
        w.remember("z" * 22, os.urandom(32), 1061, 1061)  # once the old ones expire, room again
        self.assertEqual(len(w), 2)

    def test_clock_jump(self) -> None:
        w = ReplayWindow(60, 100)
        w.remember("a" * 22, b"e" * 32, 1000, 1000)
        w.check_unseen("b" * 22, b"f" * 32, 10**9)
        self.assertEqual(len(w), 0)


class GCRA(TestCase):
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
        self.assertLessEqual(len(limiter), 3)
