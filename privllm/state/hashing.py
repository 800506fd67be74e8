"""
The names the routers store in Redis, sans-IO: keyed hashes, never a value in clear.

Every name is HMAC-SHA256(k_epoch, kind || 0x00 || value) truncated to 16 bytes (32 hex
digits), where k_epoch = HMAC-SHA256(root, "privllm-state" || epoch) and epoch =
floor(now / rotation). The root is a secret file the routers share; it never leaves them.
Someone who reads Redis sees random-looking names that change every epoch, so they cannot
tell whether two requests came from one address or device, nor link one across epochs.

Writes use the current epoch's name; lookups of the replay window and of spent proofs of work
also ask the previous and the next epoch's, so an entry written just before a boundary, or by
a router whose clock is a little behind or ahead, is found. (Rate limits and stream counts ask
the current and previous ones: a skew at a boundary costs at most a moment's extra quota.)
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["NAME_SIZE", "ROOT_SIZE", "Namer"]

ROOT_SIZE = 32
NAME_SIZE = 16


class Namer:
    def __init__(self, root: bytes, rotation: int) -> None:
        if len(root) != ROOT_SIZE or rotation < 1:
            raise ValueError(f"the state key must be {ROOT_SIZE} bytes and the rotation positive")
        self._root = root
        self.rotation = rotation
        self._keys: dict[int, bytes] = {}  # the two epochs in use, nothing older

    def epoch(self, now: float) -> int:
        return int(now // self.rotation)

    def name(self, kind: bytes, value: bytes, epoch: int) -> str:
        digest = hmac.new(self._key(epoch), kind + b"\x00" + value, hashlib.sha256).digest()
        return digest[:NAME_SIZE].hex()

    def names(self, kind: bytes, value: bytes, now: float) -> tuple[str, str, str]:
        """The current epoch's name (to write and read), then the previous one's and the next
        one's (to read: written just before a boundary, or by a router whose clock is ahead)."""
        epoch = self.epoch(now)
        return tuple(self.name(kind, value, e) for e in (epoch, epoch - 1, epoch + 1))  # type: ignore[return-value]

    def check(self) -> str:
        """A value that tells whether two routers hold the same root, and nothing else."""
        return hmac.new(self._root, b"privllm-state-check", hashlib.sha256).digest()[:NAME_SIZE].hex()

    def _key(self, epoch: int) -> bytes:
        key = self._keys.get(epoch)
        if key is None:
            key = hmac.new(
                self._root, b"privllm-state" + epoch.to_bytes(8, "big", signed=True), hashlib.sha256
            ).digest()
            if len(self._keys) >= 6:
                self._keys.clear()
            self._keys[epoch] = key
        return key
