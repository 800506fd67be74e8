"""The private Twisted names privllm.twisted_private relies on: a Twisted upgrade that renames
or changes them fails here, not silently in production logs."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import reactor
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..twisted_private import quiet_pool


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hi"


class QuietPool(TestCase):
    timeout = 10

    def test_the_private_names_exist(self) -> None:
        self.assertIs(HTTPConnectionPool._factory, _HTTP11ClientFactory)  # type: ignore[attr-defined]
        self.assertTrue(_HTTP11ClientFactory.noisy)

    async def _start_lines(self, quiet: bool) -> list[LogEvent]:
        """The factory start and stop lines one request through a pool logs."""
        port: Any = cast(Any, reactor).listenTCP(0, Site(Hello()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        events: list[LogEvent] = []
        observer: Any = events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        pool = HTTPConnectionPool(reactor, persistent=False)
        if quiet:
            quiet_pool(pool)
        response = await Agent(reactor, pool=pool).request(b"GET", b"http://127.0.0.1:%d/" % port.getHost().port)
        self.assertEqual(await readBody(response), b"hi")
        await pool.closeCachedConnections()
        return [
            e
            for e in events
            if "factory" in (e.get("log_format") or "") and isinstance(e.get("factory"), _HTTP11ClientFactory)
        ]

    async def test_a_pool_logs_its_factory_without_it(self) -> None:
        """The control: without quiet_pool the lines are there, so the test below can fail."""
        self.assertNotEqual(await self._start_lines(quiet=False), [])

    async def test_a_quiet_pool_does_not(self) -> None:
        self.assertEqual(await self._start_lines(quiet=True), [])
