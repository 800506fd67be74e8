"""
llama-server's own metrics, passed through at /llama/metrics on the loopback metrics
listener. With `llama.metrics` on, llama-server counts its tokens, slots, queue and KV cache
(counts and timings only, never content) at its /metrics; but it listens only on its private
socket, which Prometheus cannot scrape. Each scrape here asks it once, bounded in time and size.
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..upstream.llama import LlamaServer

__all__ = ["CONTENT_TYPE", "LlamaMetrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class LlamaMetrics(Resource):
    isLeaf = True

    def __init__(self, llama: LlamaServer, timeout: float) -> None:
        super().__init__()
        self._llama = llama
        self._timeout = timeout

    def render_GET(self, request: Request) -> int:
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))

        def answer(body: bytes | None) -> None:
            if gone:  # the scraper left
                return
            if body is None:
                request.setResponseCode(503)
                body = b"llama-server's metrics did not answer\n"
            else:
                request.setHeader(b"content-type", CONTENT_TYPE)
            request.write(body)
            request.finish()

        ensureDeferred(self._llama.metrics_text(self._timeout)).addCallback(answer)
        return NOT_DONE_YET
