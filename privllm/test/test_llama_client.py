"""The upstream client against a synthetic llama-server (test equipment) on a UNIX socket."""

from __future__ import annotations

import os
import tempfile
import time

from twisted.application.service import MultiService
from twisted.internet import reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from ..upstream.health import HealthMonitor
from ..upstream.llama import LlamaServer
from .helpers import open_sockets


class StalledBody(Protocol):
    """Answers /health with headers and one byte of a 100-byte body, then nothing."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data and self.transport is not None:
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            self.transport.write(head + b"{")  # type: ignore[call-arg]


class Health(TestCase):
    timeout = 20

    async def test_a_stalled_health_body_does_not_stop_polling(self) -> None:
        path = os.path.join(tempfile.mkdtemp(dir=os.path.abspath(".")), "s.sock")
        port = reactor.listenUNIX(path, Factory.forProtocol(StalledBody))  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        llama = LlamaServer(reactor, "unix://" + path, 1.0)
        self.addCleanup(llama.close)
        monitor = HealthMonitor(lambda: llama.ready(0.3), interval=0.2, clock=reactor, retry=0.2)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        await task.deferLater(reactor, 1.0, lambda: None)  # type: ignore[arg-type]
        self.assertFalse(monitor.ready)
        self.assertIsNotNone(monitor._next, "the stalled probe ended and the next one is scheduled")


class CannedAnswer(Protocol):
    """Test equipment: answers any request with the factory's canned bytes, then waits."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data and self.transport is not None:
            self.transport.write(self.factory.answer)  # type: ignore[attr-defined,call-arg]


class LlamaMetricsText(TestCase):
    """LlamaServer.metrics_text: llama-server's /metrics, or None, always within its timeout."""

    timeout = 20

    async def ask(self, answer: bytes) -> tuple[bytes | None, float]:
        path = os.path.join(tempfile.mkdtemp(dir=os.path.abspath(".")), "m.sock")
        factory = Factory.forProtocol(CannedAnswer)
        factory.answer = answer  # type: ignore[attr-defined]
        port = reactor.listenUNIX(path, factory)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        llama = LlamaServer(reactor, "unix://" + path, 1.0)
        self.addCleanup(llama.close)
        started = time.monotonic()
        text = await llama.metrics_text(0.3)
        return text, time.monotonic() - started

    async def test_the_text(self) -> None:
        body = b"llamacpp:prompt_tokens_total 3\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        self.assertEqual((await self.ask(head + body))[0], body)

    async def test_not_200_is_none(self) -> None:
        answer = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 2\r\n\r\n{}"  # llama-server without --metrics
        self.assertIsNone((await self.ask(answer))[0])

    async def test_a_stalled_or_endless_body_is_none_in_time(self) -> None:
        stalled = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nx"
        text, took = await self.ask(stalled)
        self.assertIsNone(text)
        self.assertLess(took, 2.0)
        huge = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 << 20) + b"x" * (2 << 20)
        self.assertIsNone((await self.ask(huge))[0], "over the bound")


class ClosedOnStop(TestCase):
    """The service closed_on_stop gives: no connection the client kept outlives it."""

    timeout = 20

    async def test_no_socket_outlives_the_stopped_service(self) -> None:
        path = os.path.join(tempfile.mkdtemp(dir=os.path.abspath(".")), "k.sock")
        factory = Factory.forProtocol(CannedAnswer)
        factory.answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"  # type: ignore[attr-defined]
        port = reactor.listenUNIX(path, factory)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        before = open_sockets()
        llama = LlamaServer(reactor, "unix://" + path, 1.0)
        root = MultiService()
        llama.closed_on_stop().setServiceParent(root)
        root.startService()
        self.assertEqual(await llama.metrics_text(1.0), b"ok")
        self.assertEqual(
            len(open_sockets() - before), 2, "the pool keeps the connection while running (both ends here)"
        )
        await root.stopService()
        for _ in range(50):  # the server's end closes a turn or two later
            if open_sockets() == before:
                break
            await task.deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]
        self.assertEqual(open_sockets(), before)
