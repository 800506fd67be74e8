"""Reading and writing the integers of RFC 9458 and RFC 9292: fixed-width big-endian ones and
QUIC variable-length ones (RFC 9000 section 16)."""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import AfterFinal, Malformed, OhttpError

__all__ = [
    "VARINT_MAX",
    "FedReader",
    "Reader",
    "decode_varint",
    "encode_varint",
    "varint_size",
]

VARINT_MAX = 2**62 - 1
_T = TypeVar("_T")


class FedReader(Generic[_T]):
    """A reader fed any split of its input: `_advance` turns what is buffered into parts. Any
    OhttpError closes it for good, as its end does; fed after that, it raises AfterFinal."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._closed = False

    def feed(self, data: bytes) -> list[_T]:
        """The parts `data` completes, in order."""
        self._open_or_fail()
        try:
            self._buffer += data
            return self._advance()
        except OhttpError:
            self._closed = True
            raise

    def _closing(self) -> None:
        """The input ended (`end`): nothing is read after this, whatever `end` finds."""
        self._open_or_fail()
        self._closed = True

    def _open_or_fail(self) -> None:
        if self._closed:
            raise AfterFinal("the input already ended or failed")

    def _advance(self) -> list[_T]:
        raise NotImplementedError


def encode_varint(value: int) -> bytes:
    """The shortest encoding: RFC 9292 accepts any, the chunked draft leaves the choice open."""
    if value < 0 or value > VARINT_MAX:
        raise ValueError("out of varint range")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 1 << 14).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 2 << 30).to_bytes(4, "big")
    return (value | 3 << 62).to_bytes(8, "big")


def varint_size(first: int) -> int:
    """The length of a varint from its first byte."""
    return 1 << (first >> 6)


def decode_varint(data: bytes | bytearray | memoryview) -> int:
    """A varint that fills `data` exactly (its length from varint_size)."""
    value = int.from_bytes(data, "big")
    return value & ((1 << (8 * len(data) - 2)) - 1)


class Reader:
    """Reads a complete message front to back; every shortfall is Malformed."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise Malformed("truncated")
        start = self._offset
        self._offset += n
        return self._data[start : self._offset]

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def varint(self) -> int:
        if not self.remaining:
            raise Malformed("truncated")
        return decode_varint(self.take(varint_size(self._data[self._offset])))

    def end(self) -> None:
        if self.remaining:
            raise Malformed("trailing bytes")
