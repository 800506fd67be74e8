"""
The client's side of one admitted chat: the opening, then sealed chunks, gathered by the
coalescer and padded, and keep-alives while nothing else is sent.

privllm.web.chat decides what to say (deltas, the end, an error); `SealedEvents` decides when
it goes on the wire (coalescing, holding writes, keep-alives, metrics), and a `Framing` how:
v1's event stream of sealed chunks (`SseFraming`) or v2's chunked Oblivious HTTP response
(`OhttpFraming`). It keeps the stream's keys and nothing of the conversation.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.server import Request

from ..config.schema import Privacy
from ..protocol import suite
from ..protocol.coalesce import Coalescer, delta_json
from ..protocol.encoding import b64encode, dumps
from ..protocol.ohttp.message import Context
from ..protocol.sse import KEEPALIVE, encode_event
from ..protocol.stream import StreamSealer, derive_stream_keys
from ..protocol.v2.response import ResponseStream
from .metrics import RouterMetrics

__all__ = ["OHTTP_CHUNKED", "Framing", "OhttpFraming", "SealedEvents", "SseFraming"]

OHTTP_CHUNKED = b"message/ohttp-chunked-res"


class Framing(Protocol):
    """How one answer's pieces are sealed and framed; each returns the bytes to write."""

    content_type: bytes

    def start(self) -> bytes:
        """The first bytes, before any chunk: may derive the keys (and fail)."""

    def delta(self, text: str) -> bytes:
        """One delta, sealed and padded."""

    def final(self, chunk: dict[str, Any]) -> bytes:
        """The last chunk (done or error), sealed as the last."""

    def keepalive(self) -> bytes:
        """Bytes that keep a quiet stream alive."""


class SseFraming:
    """Protocol v1: `init` with a fresh response nonce, then `chunk` events; keep-alive comments."""

    content_type = b"text/event-stream"

    def __init__(self, response_secret: bytes, encapsulated_key: bytes, pad_to: int) -> None:
        self._secret = response_secret
        self._enc = encapsulated_key
        self._pad_to = pad_to
        self._sealer: StreamSealer | None = None

    def start(self) -> bytes:
        response_nonce = os.urandom(suite.RESPONSE_NONCE_SIZE)
        keys = derive_stream_keys(self._secret, self._enc, response_nonce)
        self._sealer = StreamSealer(keys, pad_to=self._pad_to)
        return encode_event("init", dumps({"response_nonce": b64encode(response_nonce)}).decode())

    def delta(self, text: str) -> bytes:
        assert self._sealer is not None
        return encode_event("chunk", self._sealer.seal_json(delta_json(text)))

    def final(self, chunk: dict[str, Any]) -> bytes:
        assert self._sealer is not None
        return encode_event("chunk", self._sealer.seal(chunk, final=True))

    def keepalive(self) -> bytes:
        return KEEPALIVE


class OhttpFraming:
    """Protocol v2: a chunked Oblivious HTTP response (privllm.protocol.v2.response)."""

    content_type = OHTTP_CHUNKED

    def __init__(self, context: Context, pad_to: int) -> None:
        self._stream = ResponseStream(context, pad_to)

    def start(self) -> bytes:
        return self._stream.start(200)

    def delta(self, text: str) -> bytes:
        return self._stream.event({"type": "delta", "text": text})

    def final(self, chunk: dict[str, Any]) -> bytes:
        return self._stream.final(chunk)

    def keepalive(self) -> bytes:
        return self._stream.keepalive()


class SealedEvents:
    def __init__(self, request: Request, clock: IReactorTime, privacy: Privacy, metrics: RouterMetrics) -> None:
        self._request = request
        self._clock = clock
        self._pad_to = privacy.pad_to
        self._metrics = metrics
        self._coalescer = Coalescer(privacy.coalesce_ms / 1000.0, privacy.pad_to)
        self._flush_call: IDelayedCall | None = None
        self._framing: Framing | None = None
        self._unreported = 0  # chunks not yet in the metric
        self._held: list[bytes] | None = None  # writes gathered between hold and release
        self._last_delta: float | None = None  # when the previous delta chunk was sealed
        self._gaps = metrics.gap_tally()
        self.last_write = clock.seconds()

    def open(self, framing: Framing) -> None:
        """Start the framing (it may fail: nothing is sent then); send the headers and its first bytes."""
        first = framing.start()
        self._framing = framing
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", framing.content_type)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        self._write(first)

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
        assert self._framing is not None
        self._send_sealed(self._framing.final(chunk))

    def tick(self, keepalive: float) -> None:
        """Once a second: count chunks into the metric, and keep a quiet stream alive."""
        self._report()
        if self._clock.seconds() - self.last_write >= keepalive and self._framing is not None:
            self._write(self._framing.keepalive())

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
        assert self._framing is not None
        self._send_sealed(self._framing.delta(text))
        sent = self.last_write  # the write's own time: no second clock read per chunk
        if self._last_delta is not None:
            self._gaps.add(sent - self._last_delta)
        self._last_delta = sent

    def _send_sealed(self, sealed: bytes) -> None:
        self._write(sealed)
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
