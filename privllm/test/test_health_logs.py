"""Health polling on a fake clock, and the log allow-list."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from ..logs import request_tag, sanitize
from ..upstream.health import HealthMonitor


class Health(TestCase):
    def test_fast_retry_until_ready_then_interval(self) -> None:
        clock = Clock()
        answers = iter([False, False, True, True, False, True])
        seen: list[bool] = []

        async def probe() -> bool:
            return next(answers)

        monitor = HealthMonitor(probe, interval=5, clock=clock, on_change=seen.append, retry=0.5)
        monitor.startService()
        self.assertFalse(monitor.ready)
        clock.advance(0.5)
        self.assertFalse(monitor.ready)
        clock.advance(0.5)
        self.assertTrue(monitor.ready)
        clock.advance(4.9)
        self.assertEqual(seen, [True])
        clock.advance(0.1)  # the fourth answer, True
        clock.advance(5)  # the fifth, False: out of rotation
        self.assertFalse(monitor.ready)
        clock.advance(0.5)
        self.assertTrue(monitor.ready)
        self.assertEqual(seen, [True, False, True])
        monitor.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class AllowList(TestCase):
    def test_unknown_fields_removed_and_message_withheld(self) -> None:
        event = {"log_format": "prompt was {prompt}", "prompt": "CANARY", "log_level": None, "log_namespace": "x"}
        sanitize(event)
        self.assertNotIn("prompt", event)
        self.assertNotIn("CANARY", formatEvent(event))
        self.assertIn("withheld (fields: prompt)", formatEvent(event))

    def test_allowed_fields_kept(self) -> None:
        event = {"log_format": "chat {rid} ended: {outcome}", "rid": "ab", "outcome": "ok", "log_namespace": "x"}
        sanitize(event)
        self.assertEqual(formatEvent(event), "chat ab ended: ok")

    def test_failures_reduced_to_their_type(self) -> None:
        try:
            raise ValueError("CANARY in an exception message")
        except ValueError:
            failure = Failure()
        event = {"log_format": "boom", "log_failure": failure, "log_namespace": "x"}
        sanitize(event)
        self.assertNotIn("log_failure", event)
        self.assertEqual(formatEvent(event), "boom [ValueError]")

    def test_legacy_failure_reduced_to_its_type(self) -> None:
        try:
            raise KeyError("CANARY")
        except KeyError:
            failure = Failure()
        event = {
            "log_format": "{log_text}",
            "log_text": "CANARY why",
            "failure": failure,
            "why": "CANARY",
            "isError": 1,
        }
        sanitize(event)
        self.assertEqual(formatEvent(event), "failure [KeyError]")

    def test_legacy_text_and_stdout_withheld(self) -> None:
        for event in (
            {"log_format": "{log_text}", "log_text": "CANARY", "message": ("CANARY",)},
            {"log_format": "{log_io}", "log_io": "CANARY"},
        ):
            sanitize(event)
            self.assertNotIn("CANARY", formatEvent(event) + repr(event))

    def test_request_tag_is_keyed(self) -> None:
        tag = request_tag("a" * 22)
        self.assertEqual(tag, request_tag("a" * 22))
        self.assertNotEqual(tag, request_tag("b" * 22))
        self.assertNotIn("a" * 8, tag)
