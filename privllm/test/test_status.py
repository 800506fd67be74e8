"""The status gauges on a fake clock: key age and rotation, proof of work asked, the replay window's fill."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ..protocol.admission import Ask, PowGate
from ..protocol.pow import Challenges, DifficultyPolicy
from ..state.interface import Limits, StateUnavailable
from ..state.memory import MemoryState
from ..web.metrics import RouterMetrics
from ..web.status import StatusGauges
from .helpers import NOW, ring

DAY = 86400
LIMITS = Limits(1000, 1000, 1000, 1000, 100, 100, 100, 30, 5, 40, 40, 1000)


class Gauges(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.metrics = RouterMetrics()
        self.ring = ring(NOW, interval=DAY)
        self.state = MemoryState(LIMITS)
        gate = PowGate(Challenges(os.urandom(32), 60), DifficultyPolicy(2, 1000, 8, 2, 12))
        self.gauges = StatusGauges(self.metrics, self.clock, self.ring, self.state, 40, gate)
        self.gauges.startService()
        self.addCleanup(self.gauges.stopService)

    def value(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name)

    def test_key_age_and_rotation_due_follow_the_clock(self) -> None:
        self.assertEqual(
            (self.value("privllm_key_age_seconds"), self.value("privllm_key_rotation_due_seconds")), (0, DAY)
        )
        self.clock.advance(3600)
        self.assertEqual(self.value("privllm_key_age_seconds"), 3600)
        self.assertEqual(self.value("privllm_key_rotation_due_seconds"), DAY - 3600)

    def test_a_rotation_that_did_not_happen_shows_overdue(self) -> None:
        self.clock.advance(DAY)
        self.assertEqual(self.value("privllm_key_age_seconds"), 0, "the next key, made ahead, took over")
        self.clock.advance(DAY + 600)  # nothing refreshed the ring since
        self.assertEqual(self.value("privllm_key_rotation_due_seconds"), -600)
        self.ring.refresh(int(self.clock.seconds()), lambda: ring().keys[0].secret)
        self.clock.advance(StatusGauges.EVERY)
        due = self.value("privllm_key_rotation_due_seconds")
        assert due is not None
        self.assertGreater(due, 0)

    def test_replay_window_fill_and_capacity(self) -> None:
        self.assertEqual((self.value("privllm_replay_entries"), self.value("privllm_replay_capacity")), (0, 40))
        for n in range(3):
            ask = Ask("192.0.2.1", NOW, request_id=f"r{n}", encapsulated_key=bytes([n]) * 32, timestamp=NOW)
            self.state.replay.remember(ask.request_id, ask.encapsulated_key, ask.timestamp, NOW, ask.address)
        self.clock.advance(StatusGauges.EVERY)
        self.assertEqual(self.value("privllm_replay_entries"), 6)
        self.clock.advance(30 + 5 + 1)  # past the window: forgotten
        self.assertEqual(self.value("privllm_replay_entries"), 0)

    def test_proof_of_work_asked_under_load_then_not(self) -> None:
        self.assertEqual(self.value("privllm_pow_difficulty"), 0)
        for device in (b"a", b"b", b"c", b"d"):
            self.state.slots.acquire(device)
        self.clock.advance(StatusGauges.EVERY)
        self.assertEqual(self.value("privllm_pow_difficulty"), 10)  # twice the threshold: base + one step
        for device in (b"a", b"b", b"c", b"d"):
            self.state.slots.release(device)
        self.clock.advance(StatusGauges.EVERY)
        self.assertEqual(self.value("privllm_pow_difficulty"), 0)

    def test_state_out_of_reach_keeps_the_last_fill(self) -> None:
        def unreachable(now: float) -> Deferred[int]:
            return fail(StateUnavailable("down"))

        self.state.replay_entries = unreachable  # type: ignore[method-assign]
        self.clock.advance(StatusGauges.EVERY)
        self.assertEqual(self.value("privllm_replay_entries"), 0)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertTrue(self.gauges._loop.running, "the timer goes on")
