"""The upstream client against a synthetic llama-server (test equipment) on a UNIX socket."""

from __future__ import annotations

import os
import tempfile

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from ..upstream.health import HealthMonitor
from ..upstream.llama import LlamaServer


class StalledBody(Protocol):
    """Answers /health with headers and one byte of a 100-byte body, then nothing."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data and self.transport is not None:
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            self.transport.write(head + b"{")  # type: ignore[call-arg]


class Health(TestCase):
    timeout = 20

    async def _stalled(self) -> None:
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

    def test_a_stalled_health_body_does_not_stop_polling(self) -> Deferred[None]:
        return ensureDeferred(self._stalled())
