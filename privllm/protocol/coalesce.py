"""
Delta coalescing, sans-IO: fewer, evenly sized chunks leak less about the answer.

Streamed answers leak token lengths through chunk sizes and timing (Weiss et al. 2024,
"What Was Your Prompt?"; Microsoft's "Whisper Leak", 2025). The sealer pads every chunk
to a bucket; this object gathers deltas over a short window so a chunk carries several
tokens. The first delta goes out at once (time to first token is visible anyway), and a
chunk is sent early rather than spill into a second padding bucket.
"""

from __future__ import annotations

import orjson

__all__ = ["Coalescer", "delta_json", "delta_size"]


def delta_json(text: str) -> bytes:
    """dumps({"type": "delta", "text": text}), without building the object (this runs per delta)."""
    return b'{"type":"delta","text":' + orjson.dumps(text) + b"}"


def delta_size(text: str) -> int:
    return len(delta_json(text))


class Coalescer:
    def __init__(self, window: float, max_bytes: int) -> None:
        self.window = window
        self.max_bytes = max_bytes
        self._pending = ""
        self._since = 0.0
        self._first = True

    def add(self, text: str, now: float) -> list[str]:
        """Take one delta; return the texts to seal now, in order."""
        if self._first or self.window <= 0:
            self._first = False
            return [text]
        out = []
        if self._pending and self.max_bytes and delta_size(self._pending + text) > self.max_bytes:
            out.append(self._take())
        if not self._pending:
            self._since = now
        self._pending += text
        if self.max_bytes and delta_size(self._pending) >= self.max_bytes:
            out.append(self._take())
        return out

    def due(self) -> float | None:
        """When the gathered text must go out, or None if nothing is waiting."""
        return self._since + self.window if self._pending else None

    def take(self) -> str | None:
        return self._take() if self._pending else None

    def _take(self) -> str:
        text, self._pending = self._pending, ""
        return text
