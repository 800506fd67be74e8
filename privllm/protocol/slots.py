"""Caps on concurrent streams, sans-IO: a global cap (checked before decryption) and a cap
per device (checked once decryption has proven the device key)."""

from __future__ import annotations


class StreamSlots:
    def __init__(self, max_streams: int, max_per_device: int) -> None:
        self.max_streams = max_streams
        self.max_per_device = max_per_device
        self.active = 0
        self._per_device: dict[bytes, int] = {}

    def full(self) -> bool:
        return self.active >= self.max_streams

    def acquire(self, device: bytes) -> bool:
        held = self._per_device.get(device, 0)
        if self.full() or held >= self.max_per_device:
            return False
        self.active += 1
        self._per_device[device] = held + 1
        return True

    def release(self, device: bytes) -> None:
        held = self._per_device[device] - 1
        if held:
            self._per_device[device] = held
        else:
            del self._per_device[device]  # no per-device record outlives its streams
        self.active -= 1
