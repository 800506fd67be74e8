"""
Property tests of what admission remembers, under random sequences of (time, address) operations:
the replay window, the rate limiter and proof-of-work verification. Each checks its bounds and
its invariants against a plain model after every step.
"""

from __future__ import annotations

import base64
import math

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ..protocol.admission import Ask
from ..protocol.encoding import b64encode
from ..protocol.errors import RATE_LIMITED, REPLAY, UNAVAILABLE, RequestRejected
from ..protocol.pow import Challenges, PowError, solve
from ..protocol.ratelimit import RateLimiter
from ..protocol.replay import ENTRIES_PER_REQUEST, ReplayWindow
from ..state.interface import PowSpent
from ..state.memory import MemoryState
from . import properties
from .helpers import limits, settled

properties.load()

START = 1_000_000
ADDRESSES = st.sampled_from(["a", "b", "c", "d"])


def rejection(f, *args) -> object:  # type: ignore[no-untyped-def]
    try:
        f(*args)
    except RequestRejected as e:
        return e.rejection
    return None


class ReplayProperties(TestCase):
    @given(
        st.integers(2, 20),
        st.integers(0, 5),
        st.integers(1, 8),
        st.integers(1, 4),
        st.lists(st.tuples(st.integers(0, 30), ADDRESSES, st.integers(-25, 10), st.booleans()), max_size=60),
    )
    def test_window(self, window: int, skew: int, requests: int, share: int, steps: list) -> None:
        skew = min(skew, window)
        max_entries = requests * ENTRIES_PER_REQUEST
        per_address = min(share, requests) * ENTRIES_PER_REQUEST
        w = ReplayWindow(window, max_entries, skew, per_address)
        now = START
        kept: dict[int, tuple[int, str]] = {}  # the model: request number -> (expires, address)
        for number, (advance, address, offset, replay) in enumerate(steps):
            now += advance
            live = {n: v for n, v in kept.items() if v[0] > now}
            if replay and kept:  # an old request again: refused while it is still fresh
                n, (expires, _) = max(kept.items())
                fresh = expires > now
                self.assertEqual(rejection(w.check_unseen, f"{n:022d}", b"%32d" % n, now) == REPLAY, fresh)
                continue
            timestamp = now + offset
            if rejection(w.check_fresh, timestamp, now) is not None:
                self.assertFalse(now - window <= timestamp <= now + skew)
                continue
            owned = sum(1 for _, a in live.values() if a == address) * ENTRIES_PER_REQUEST
            expected = None
            if (len(live) + 1) * ENTRIES_PER_REQUEST > max_entries:
                expected = UNAVAILABLE
            elif owned + ENTRIES_PER_REQUEST > per_address:
                expected = RATE_LIMITED
            self.assertEqual(rejection(w.check_room, address, now), expected)
            if expected is None:
                w.remember(f"{number:022d}", b"%32d" % number, timestamp, now, address)
                kept[number] = (timestamp + window + 1, address)
                live[number] = kept[number]
            # Bounds, and no entry outlives its time: exactly the live requests are kept.
            self.assertEqual(len(w), len(live) * ENTRIES_PER_REQUEST)
            self.assertLessEqual(len(w), max_entries)
            for a in "abcd":
                self.assertLessEqual(w.owned(a), per_address)
            self.assertTrue(all(expires - now <= w.longest_life for expires, _ in live.values()))


class RateLimiterProperties(TestCase):
    @given(
        st.floats(0.1, 10),
        st.integers(1, 5),
        st.lists(st.tuples(st.floats(0, 3), st.integers(0, 5)), max_size=80),
    )
    def test_matches_gcra_and_frees_idle_keys(self, rate: float, burst: int, steps: list) -> None:
        """With room for every key, it answers as the textbook GCRA does; and an idle key
        never stays more than a second."""
        limiter = RateLimiter(rate, burst, max_keys=6)
        interval, tolerance = 1 / rate, (burst - 1) / rate
        tat: dict[int, float] = {}
        now = float(START)
        for advance, key in steps:
            now += advance
            expected_tat = max(tat.get(key, now), now)
            allowed = expected_tat - tolerance <= now
            wait = limiter.check(key, now)
            self.assertEqual(wait == 0, allowed)
            if allowed:
                tat[key] = expected_tat + interval
            else:
                self.assertEqual(wait, max(1, math.ceil(expected_tat - tolerance - now)))
            held = limiter._tat
            self.assertTrue(all(t > now - 1 for t in held.values()))  # every idle key freed
            self.assertTrue(all(held[k] == t for k, t in tat.items() if k in held))

    @given(st.integers(1, 4), st.lists(st.tuples(st.floats(0, 2), st.integers(0, 20)), max_size=80))
    def test_bounded_and_fails_closed_only_when_full_of_debt(self, max_keys: int, steps: list) -> None:
        limiter = RateLimiter(1.0, 3, max_keys)
        now = float(START)
        for advance, key in steps:
            now += advance
            before = dict(limiter._tat)
            wait = limiter.check(key, now)
            self.assertLessEqual(len(limiter), max_keys)
            if key not in before and wait:
                # A new key is refused only while the table is full of keys still owing.
                self.assertEqual(len(limiter), max_keys)
                self.assertTrue(all(math.ceil(t) > now for t in limiter._tat.values()))


class ProofOfWorkProperties(TestCase):
    @given(
        st.integers(1, 6),
        st.lists(st.tuples(st.integers(0, 4), ADDRESSES, ADDRESSES, st.integers(0, 20)), min_size=1, max_size=30),
    )
    def test_a_solution_admits_once_from_its_address(self, max_spent: int, steps: list) -> None:
        ttl = 10
        challenges = Challenges(b"k" * 32, ttl)
        state = MemoryState(limits(pow_max_spent=max_spent))
        now = float(START)
        issued: list[tuple[str, str, str, int]] = []  # challenge, nonce, address, expires
        spent: dict[str, int] = {}  # the model: challenge -> expires
        for advance, issue_to, send_from, pick in steps:
            now += advance
            doc = challenges.issue(1, now, issue_to)
            challenge = str(doc["challenge"])
            nonce = b64encode(solve(base64.b64decode(challenge), "r" * 22, 1))
            issued.append((challenge, nonce, issue_to, int(str(doc["expires"]))))
            challenge, nonce, address, expires = issued[pick % len(issued)]
            live = {c: e for c, e in spent.items() if e + 1 > now}
            spending = False
            try:
                token, until = challenges.verify(challenge, nonce, "r" * 22, now, send_from)
                spending = True
                ask = Ask(
                    send_from, now, request_id="r" * 22, encapsulated_key=b"e", pow_token=token, pow_expires=until
                )
                settled(state.screen(ask))
                outcome = "ok"
            except (PowError, PowSpent):
                outcome = "refused"
            except RequestRejected as e:
                self.assertEqual(e.rejection, UNAVAILABLE)
                outcome = "full"
            valid = send_from == address and now <= expires and challenge not in spent
            if not valid:
                self.assertEqual(outcome, "refused")  # a spent challenge never verifies twice
            elif len(live) >= max_spent:
                self.assertEqual(outcome, "full")
            else:
                self.assertEqual(outcome, "ok")
                spent[challenge] = expires
                live[challenge] = expires
            if spending:  # the state was asked: it kept spent ones exactly while they could verify
                self.assertEqual(len(state.spent), len(live))
            self.assertLessEqual(len(state.spent), max_spent)
