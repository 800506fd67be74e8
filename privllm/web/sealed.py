"""
The client's side of one admitted chat: the `init` event, then sealed chunks, gathered by
the coalescer and padded, and keep-alives while nothing else is sent.

privllm.web.chat decides what to say (deltas, the end, an error); this object decides how
it goes on the wire. It keeps the stream's keys and nothing of the conversation.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.server import Request

from ..config.schema import Privacy
from ..protocol import suite
from ..protocol.coalesce import Coalescer, delta_json
from ..protocol.encoding import b64encode, dumps
from ..protocol.sse import KEEPALIVE, encode_event
from ..protocol.stream import StreamSealer, derive_stream_keys
from .metrics import RouterMetrics

__all__ = ["SealedEvents"]


class SealedEvents:
    def __init__(self, request: Request, clock: IReactorTime, privacy: Privacy, metrics: RouterMetrics) -> None:
        self._request = request
        self._clock = clock
        self._pad_to = privacy.pad_to
        self._metrics = metrics
        self._coalescer = Coalescer(privacy.coalesce_ms / 1000.0, privacy.pad_to)
        self._flush_call: IDelayedCall | None = None
        self._sealer: StreamSealer | None = None
        self._unreported = 0  # chunks not yet in the metric
        self._held: list[bytes] | None = None  # writes gathered between hold and release
        self._last_delta: float | None = None  # when the previous delta chunk was sealed
        self._gaps = metrics.gap_tally()
        self.last_write = clock.seconds()

    def open(self, response_secret: bytes, encapsulated_key: bytes) -> None:
        """Derive the stream keys with a fresh response nonce; send the headers and `init`."""
        response_nonce = os.urandom(suite.RESPONSE_NONCE_SIZE)
        keys = derive_stream_keys(response_secret, encapsulated_key, response_nonce)
        self._sealer = StreamSealer(keys, pad_to=self._pad_to)
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        self._write(encode_event("init", dumps({"response_nonce": b64encode(response_nonce)}).decode()))

    def delta(self, text: str) -> None:
        """Seal now what the coalescer lets go; gather the rest until its window ends."""
        now = self._clock.seconds()
        for piece in self._coalescer.add(text, now):
            self._send_text(piece)
        due = self._coalescer.due()
        if due is not None and self._flush_call is None:
            self._flush_call = self._clock.callLater(max(0.0, due - now), self._flush)

    def final(self, chunk: dict[str, Any]) -> None:
        """The last chunk (done or error), after whatever the coalescer still holds."""
        self._flush()
        assert self._sealer is not None
        self._send_sealed(self._sealer.seal(chunk, final=True))

    def tick(self, keepalive: float) -> None:
        """Once a second: count chunks into the metric, and keep a quiet stream alive."""
        self._report()
        if self._clock.seconds() - self.last_write >= keepalive:
            self._write(KEEPALIVE)

    def hold(self) -> None:
        """Gather writes until `release`: the chunks of one upstream read then leave in one
        write, so HTTP chunking and the TLS layer's buffering happen once, not per chunk."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held, None
        if held:
            self._request.write(b"".join(held))

    def close(self) -> None:
        self.release()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._report()

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        piece = self._coalescer.take()
        if piece:
            self._send_text(piece)

    def _send_text(self, text: str) -> None:
        assert self._sealer is not None
        self._send_sealed(self._sealer.seal_json(delta_json(text)))
        sent = self.last_write  # the write's own time: no second clock read per chunk
        if self._last_delta is not None:
            self._gaps.add(sent - self._last_delta)
        self._last_delta = sent

    def _send_sealed(self, sealed: str) -> None:
        self._write(encode_event("chunk", sealed))
        self._unreported += 1  # counted in the metric each second: a locked inc per chunk was 3 %

    def _report(self) -> None:
        if self._unreported:
            self._metrics.chunks.inc(self._unreported)
            self._unreported = 0
        self._gaps.flush()

    def _write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            self._request.write(data)
        self.last_write = self._clock.seconds()
