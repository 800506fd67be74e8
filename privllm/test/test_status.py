"""The status gauges on a fake clock: key age and rotation, proof of work asked, the replay window's fill."""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import TestCase

from ..protocol.admission import Ask, PowGate
from ..protocol.pow import Challenges, DifficultyPolicy
from ..state.interface import Limits, StateUnavailable
from ..state.memory import MemoryState
from ..upstream.breaker import CircuitBreaker
from ..upstream.pool import Node
from ..web import status
from ..web.metrics import RouterMetrics
from ..web.status import StatusGauges
from .fakes import FakeUpstream
from .helpers import NOW, ring

DAY = 86400
LIMITS = Limits(1000, 1000, 1000, 1000, 100, 100, 100, 30, 5, 40, 40, 1000, 1000, 1000, 1000, 1000, 100, 40)


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

    def test_key_age_and_the_time_until_the_next_key(self) -> None:
        # the ring made the next key one interval ahead
        self.assertEqual(
            (self.value("privllm_key_age_seconds"), self.value("privllm_key_rotation_due_seconds")), (0, DAY)
        )
        self.clock.advance(3600)
        self.assertEqual(self.value("privllm_key_age_seconds"), 3600)
        self.assertEqual(self.value("privllm_key_rotation_due_seconds"), DAY - 3600)

    def test_a_ring_left_unrefreshed_is_overdue_a_whole_interval_before_clients_lack_a_key(self) -> None:
        self.clock.advance(DAY + 600)  # the next key took over; nothing made the one after it
        self.assertEqual(self.value("privllm_key_age_seconds"), 600)
        self.assertEqual(self.value("privllm_key_rotation_due_seconds"), -600)
        self.assertTrue(self.ring.published(int(self.clock.seconds())), "clients still have a current key")
        self.ring.refresh(int(self.clock.seconds()), lambda: ring().keys[0].secret)
        self.clock.advance(StatusGauges.EVERY)
        self.assertEqual(self.value("privllm_key_rotation_due_seconds"), DAY - 600 - StatusGauges.EVERY)

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
        self.state.replay.remember("r", b"k" * 32, NOW, NOW, "192.0.2.1")
        self.clock.advance(StatusGauges.EVERY)
        self.assertEqual(self.value("privllm_replay_entries"), 2)

        def unreachable(now: float) -> Deferred[int]:
            return fail(StateUnavailable("down"))

        self.state.replay_entries = unreachable  # type: ignore[method-assign]
        self.clock.advance(StatusGauges.EVERY)
        self.assertEqual(self.value("privllm_replay_entries"), 2)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_failing_update_is_logged_and_the_timer_goes_on(self) -> None:
        def broken(now: int) -> None:
            raise RuntimeError("a bug")

        events: list[dict[str, Any]] = []  # this module's log only: other tests may change the global one
        self.patch(status, "log", Logger(observer=cast(ILogObserver, events.append)))
        self.ring.rotation_status = broken  # type: ignore[method-assign,assignment]
        self.clock.advance(StatusGauges.EVERY)
        self.assertEqual([e["log_failure"].type for e in events], [RuntimeError])
        del self.ring.rotation_status
        self.clock.advance(3600)
        self.assertEqual(self.value("privllm_key_age_seconds"), 3600 + StatusGauges.EVERY, "still updated")

    def test_an_open_breaker_shows_half_open_once_cooled_without_a_request(self) -> None:
        breaker = CircuitBreaker(1, 30)
        node = Node("https://10.0.0.2:8443", FakeUpstream(), breaker, healthy=True)
        gauges = StatusGauges(self.metrics, self.clock, self.ring, self.state, 40, None, [node])
        gauges.startService()
        self.addCleanup(gauges.stopService)

        def shown() -> list[str]:
            labels = {"node": node.name}
            states = ("closed", "open", "half_open")
            return [
                s
                for s in states
                if self.metrics.registry.get_sample_value("privllm_breaker_state", {**labels, "state": s})
            ]

        self.assertEqual(shown(), ["closed"])
        breaker.failure(self.clock.seconds())
        self.clock.advance(StatusGauges.EVERY)
        self.assertEqual(shown(), ["open"])
        self.clock.advance(30)
        self.assertEqual(shown(), ["half_open"])
        self.assertEqual(breaker.state, "open", "the gauge does not move the breaker")


class GapTallies(TestCase):
    """GapTally writes prometheus_client's private bucket values: it must give exactly what
    observing each gap gives (this fails on an upgrade that changes them)."""

    def test_bulk_equals_one_by_one(self) -> None:
        gaps = [0.0, 0.001, 0.0011, 0.05, 0.074, 0.075, 0.3, 14.9, 15.0, 15.1, 3600.0] * 3
        one_by_one, bulk = RouterMetrics(), RouterMetrics()
        for gap in gaps:
            one_by_one.chunk_gap.observe(gap)
        tally = bulk.gap_tally()
        for gap in gaps[:10]:
            tally.add(gap)
        tally.flush()
        for gap in gaps[10:]:
            tally.add(gap)
        tally.flush()
        tally.flush()  # nothing new: nothing added

        def samples(m: RouterMetrics) -> list[tuple[str, dict[str, str], float]]:
            family = next(f for f in m.registry.collect() if f.name == "privllm_inter_chunk_seconds")
            return [(s.name, s.labels, round(s.value, 9)) for s in family.samples if not s.name.endswith("_created")]

        self.assertEqual(samples(bulk), samples(one_by_one))
        self.assertEqual(bulk.registry.get_sample_value("privllm_inter_chunk_seconds_count"), len(gaps))


class NodeSeries(TestCase):
    def test_a_node_has_its_series_from_the_start(self) -> None:
        """A node down from the first check still shows (health 0), and increase() over the
        transitions counts the first opening (the counter exists at 0 before it)."""
        metrics = RouterMetrics()
        metrics.add_node("https://10.0.0.2:8443", "closed")
        value = metrics.registry.get_sample_value
        node = {"node": "https://10.0.0.2:8443"}
        self.assertEqual(value("privllm_node_healthy", node), 0)
        for state in ("closed", "open", "half_open"):
            self.assertEqual(value("privllm_breaker_transitions_total", {**node, "state": state}), 0)
        self.assertEqual(value("privllm_breaker_state", {**node, "state": "closed"}), 1)
