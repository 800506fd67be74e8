"""Health polling on a fake clock, and the log allow-list."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, formatEventAsClassicLogText, globalLogPublisher
from twisted.python import log as legacy
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from ..logs import has_address, request_tag, sanitize
from ..upstream.health import HealthMonitor
from ..web.request import PrivllmSite

PEER = "203.0.113.7"


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


class NoAddresses(TestCase):
    """Point 7: no field that is kept can carry the client's address."""

    def captured(self) -> list[dict[str, Any]]:
        """Events from the global publisher as an output observer after `sanitize` sees them."""
        seen: list[dict[str, Any]] = []

        def collect(event: dict[str, Any]) -> None:
            seen.append(dict(event))

        globalLogPublisher.addObserver(sanitize)  # type: ignore[arg-type]
        globalLogPublisher.addObserver(collect)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, collect)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, sanitize)  # type: ignore[arg-type]
        return seen

    def line(self, event: dict[str, Any]) -> str:
        return formatEventAsClassicLogText(event) or ""

    def test_log_system_dropped(self) -> None:
        event = {"log_format": "chat {rid} ended", "rid": "ab", "log_system": f"HTTPChannel,3,{PEER}"}
        event["log_namespace"] = "privllm.web.chat"
        sanitize(event)
        self.assertNotIn("log_system", event)
        self.assertIn("[privllm.web.chat#-] chat ab ended", self.line(event))

    def test_legacy_message_in_a_connection_context(self) -> None:
        # twisted.python.log.msg inside a connection's context: system, message and log_text
        # all hold the peer; so does an error logged there with a reason.
        seen = self.captured()
        context = {"system": f"_GenericHTTPChannelProtocol (TLS),58,{PEER}"}
        legacy.callWithContext(context, legacy.msg, f"connection from {PEER}", peer=PEER)
        try:
            raise ValueError(PEER)
        except ValueError:
            legacy.callWithContext(context, legacy.err, Failure(), f"why: {PEER}")
        self.flushLoggedErrors(ValueError)
        self.assertEqual(len(seen), 2)
        for event in seen:
            self.assertNotIn(PEER, self.line(event) + repr(event))
        self.assertIn("[log_legacy#info] message withheld", self.line(seen[0]))
        self.assertIn("failure [ValueError]", self.line(seen[1]))

    def test_twisted_timeout_line(self) -> None:
        # HTTPChannel logs "Timing out client: {peer}" from inside the connection.
        seen = self.captured()
        clock = Clock()
        site = PrivllmSite(Resource(), 4096, reactor=clock, idle_timeout=5)
        protocol = site.buildProtocol(IPv4Address("TCP", PEER, 1))
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", PEER, 1)))
        clock.advance(6)
        self.assertTrue(seen, "the timeout was logged")
        for event in seen:
            self.assertNotIn(PEER, self.line(event) + repr(event))
        self.assertIn("[twisted.web.http.HTTPChannel#info] message withheld (fields: ", self.line(seen[-1]))
        self.assertIn("peer", seen[-1]["withheld"].split(", "))

    def test_address_inside_a_format_withheld(self) -> None:
        for fmt in (f"Timing out {PEER}:443", "client [2001:db8::7]:443 gone", "from ::ffff:10.1.2.3"):
            event = {"log_format": fmt, "log_namespace": "twisted.web.http"}
            sanitize(event)
            self.assertTrue(self.line(event).endswith(" [withheld#-] message withheld (fields: address)\n"))

    def test_address_in_namespace_or_twisted_value_withheld(self) -> None:
        cases: list[dict[str, Any]] = [
            {"log_format": "x", "log_namespace": f"conn.{PEER}"},
            {"log_format": "{factory} starting on {port}", "factory": f"Factory({PEER})", "port": 443},
            {"log_format": "{protocol}", "protocol": IPv6Address("TCP", "2001:db8::7", 1)},
        ]
        for event in cases:
            sanitize(event)
            self.assertEqual(event["log_namespace"], "withheld")
            self.assertFalse(has_address(formatEvent(event)), formatEvent(event))
            self.assertIn("message withheld", formatEvent(event))

    def test_format_may_not_reach_through_an_allowed_field(self) -> None:
        class Factory:
            transport = PEER

        for fmt in ("{factory.transport}", "{factory!r:{log_text}}", "{}", "{0}", "{factory()}", "{unclosed"):
            event = {"log_format": fmt, "factory": Factory(), "log_text": PEER}
            sanitize(event)
            self.assertNotIn(PEER, self.line(event))
            self.assertIn("message withheld", self.line(event))

    def test_key_that_is_not_a_name_is_not_shown(self) -> None:
        event = {"log_format": "{x}", PEER: 1}
        sanitize(event)
        self.assertEqual(event["withheld"], "?")

    def test_plain_lines_kept(self) -> None:
        event = {"log_format": "{factory} starting on {port}", "factory": "PrivllmSite", "port": 8443}
        sanitize(event)
        self.assertEqual(formatEvent(event), "PrivllmSite starting on 8443")
        for text in ("twistd 26.10.0 (python 3.11.7)", "node https://node1/ is up", "deadbeef", "at 12:30"):
            self.assertFalse(has_address(text), text)
        for text in (
            PEER,
            "::1",
            "[fe80::1%eth0]:80",
            "10.0.0.1.",
            "::ffff:127.0.0.2",
            "1.2.3.4:5",
            "10.1.2.3010.1.2.30",
            "dead::beef",
        ):
            self.assertTrue(has_address(text), text)

    def test_traced_event_still_reaches_later_observers(self) -> None:
        seen = self.captured()
        event = {"log_format": "traced", "log_trace": [], "log_namespace": "x", "log_level": LogLevel.info}
        event["log_time"] = time.time()
        globalLogPublisher(event)  # type: ignore[arg-type]
        self.assertEqual([e.get("log_format") for e in seen], ["traced"])
        self.assertEqual(len(event["log_trace"]), len(globalLogPublisher._observers))  # type: ignore[attr-defined, arg-type]

    def test_twisted_keys_of_the_wrong_type_dropped(self) -> None:
        event: dict[str, Any] = {"log_format": "x", "log_time": "CANARY", "log_level": "CANARY", "log_namespace": 7}
        before = time.time()
        sanitize(event)
        self.assertEqual(set(event), {"log_format", "log_time"})
        self.assertGreaterEqual(event["log_time"], before)  # legacy observers need a time: now
        self.assertTrue(self.line(event).endswith(" [-#-] x\n"))

    def test_an_event_it_cannot_read_is_emptied(self) -> None:
        event: dict[Any, Any] = {"log_format": "{x}", "x": PEER, 1: PEER}  # keys that cannot be sorted
        event["log_trace"] = []
        sanitize(event)
        self.assertEqual(event["log_trace"], [])  # what the publisher and legacy observers need is there
        self.assertIn("log_time", event)
        self.assertEqual(formatEvent(event), "message withheld (the allow-list failed: TypeError)")
        self.assertNotIn(PEER, self.line(event) + repr(event))
