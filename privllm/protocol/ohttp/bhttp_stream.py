"""
Indeterminate-length Binary HTTP responses (RFC 9292 section 3.2, framing indicator 3),
streamed: the plaintext of a chunked Oblivious HTTP response, written and read as it goes.

The encoder writes the head (status and header section), then each content chunk, then the
end (the content terminator and the trailer section), each as the bytes to send. The decoder
is fed any split of those bytes and yields the head, the content bytes as they arrive, and the
end; it is strict, bounded by explicit limits (field count and section size, chunk length)
and closes on the first error. Truncation (RFC 9292 section 3.8) is accepted only where what
is left out is wholly empty: content and trailers never begun, or trailers never begun.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProtocolError
from .bhttp import INDETERMINATE_RESPONSE, KNOWN_RESPONSE, Field, Informational, check_fields
from .errors import Malformed, TooLarge, Truncated, Unsupported
from .wire import FedReader, decode_varint, encode_varint, varint_size

__all__ = [
    "BinaryHttpStateError",
    "End",
    "Head",
    "Part",
    "ResponseDecoder",
    "ResponseEncoder",
    "StreamLimits",
]


@dataclass(frozen=True)
class StreamLimits:
    """What the decoder accepts: a stream has no total size, so each piece is bounded."""

    max_fields: int = 64  # field lines in one section
    max_section: int = 16384  # bytes of one field section
    max_chunk: int = 1 << 14  # the declared length of one content chunk
    max_informational: int = 4


@dataclass(frozen=True)
class Head:
    """The final response's control data and header section, with any 1xx before it."""

    status: int
    headers: tuple[Field, ...] = ()
    informational: tuple[Informational, ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise Malformed("status")
        check_fields(self.headers)


@dataclass(frozen=True)
class End:
    """The content ended; the trailer section."""

    trailers: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self.trailers)


Part = Head | bytes | End  # what the decoder yields: the head, content bytes, the end


class BinaryHttpStateError(ProtocolError):
    """The caller broke the encoder's order (content before the head, anything after the end)
    or gave an empty content chunk, which would read as the content's end."""

    code = "bhttp_state"


def _section(fields: tuple[Field, ...]) -> bytes:
    lines = b"".join(encode_varint(len(n)) + n + encode_varint(len(v)) + v for n, v in fields)
    return lines + encode_varint(0)


class ResponseEncoder:
    """Router: the bytes of one streamed response, in order: head, content chunks, end."""

    def __init__(self) -> None:
        self._state = "new"

    def _move(self, expected: str, new: str) -> None:
        if self._state != expected:
            raise BinaryHttpStateError(f"{new} after {self._state}")
        self._state = new

    def head(self, status: int, headers: tuple[Field, ...] = ()) -> bytes:
        head = Head(status, headers)  # checks the status and the fields
        self._move("new", "content")
        return encode_varint(INDETERMINATE_RESPONSE) + encode_varint(head.status) + _section(head.headers)

    def content(self, data: bytes) -> bytes:
        """One content chunk; never empty, since a zero length ends the content."""
        if not data:
            raise BinaryHttpStateError("an empty content chunk")
        self._move("content", "content")
        return encode_varint(len(data)) + data

    def end(self, trailers: tuple[Field, ...] = ()) -> bytes:
        end = End(trailers)
        self._move("content", "ended")
        return encode_varint(0) + _section(end.trailers)


def _peek_varint(buffer: bytearray, offset: int) -> tuple[int, int] | None:
    """(value, offset after it), or None while the varint is not all there."""
    if offset >= len(buffer):
        return None
    end = offset + varint_size(buffer[offset])
    if end > len(buffer):
        return None
    return decode_varint(buffer[offset:end]), end


class ResponseDecoder(FedReader[Part]):
    """Client: fed any split of a streamed response, yields its parts as they complete (content
    bytes as soon as they arrive)."""

    def __init__(self, limits: StreamLimits = StreamLimits()) -> None:
        super().__init__()
        self._limits = limits
        self._state = "framing"  # framing, status, fields, content, chunk, padding
        self._section = ""  # which field section is being read: informational, headers, trailers
        self._status = 0
        self._fields: list[Field] = []
        self._section_used = 0
        self._informational: list[Informational] = []
        self._chunk_left = 0
        self._chunks = 0
        self.finished = False  # the end was read

    def end(self) -> list[Part]:
        """The input ended: the End that a permitted truncation leaves implied, else Truncated."""
        self._closing()
        if self.finished:
            return []
        empty = not self._buffer
        no_content = self._state == "content" and not self._chunks
        no_trailers = self._state == "fields" and self._section == "trailers" and not self._section_used
        if not (empty and (no_content or no_trailers)):
            raise Truncated("the response ended early")
        self.finished = True
        return [End()]

    def _advance(self) -> list[Part]:
        parts: list[Part] = []
        while self._buffer:
            if self._state == "padding":
                if any(self._buffer):
                    raise Malformed("non-zero padding")
                self._buffer.clear()
            elif self._state == "chunk":
                parts.append(self._chunk())
            elif self._state == "fields":
                part = self._field_line()
                if part is False:
                    break
                if part is not True:
                    parts.append(part)
            elif not self._number():
                break
        return parts

    def _number(self) -> bool:
        """Read the varint of the framing, status or content state; False while incomplete."""
        peeked = _peek_varint(self._buffer, 0)
        if peeked is None:
            return False
        value, size = peeked
        del self._buffer[:size]
        if self._state == "framing":
            self._framing(value)
        elif self._state == "status":
            self._control(value)
        elif value == 0:  # content: the terminator
            self._start_section("trailers")
        elif value > self._limits.max_chunk:
            raise TooLarge("content chunk")
        else:
            self._state, self._chunk_left = "chunk", value
            self._chunks += 1
        return True

    def _framing(self, value: int) -> None:
        if value == KNOWN_RESPONSE:
            raise Unsupported("known-length Binary HTTP in a stream")
        if value != INDETERMINATE_RESPONSE:
            raise Malformed("framing indicator")
        self._state = "status"

    def _control(self, status: int) -> None:
        if 100 <= status <= 199:
            if len(self._informational) == self._limits.max_informational:
                raise TooLarge("informational responses")
            self._status = status
            self._start_section("informational")
        elif 200 <= status <= 599:
            self._status = status
            self._start_section("headers")
        else:
            raise Malformed("status")

    def _start_section(self, section: str) -> None:
        self._state, self._section = "fields", section
        self._fields, self._section_used = [], 0

    def _chunk(self) -> bytes:
        data = bytes(self._buffer[: self._chunk_left])
        del self._buffer[: len(data)]
        self._chunk_left -= len(data)
        if not self._chunk_left:
            self._state = "content"
        return data

    def _field_line(self) -> Part | bool:
        """One field line read (True), the section's end (its part, or True for a 1xx), or
        False while the line is not all there. Lengths beyond the section's room are refused
        before their bytes arrive."""
        room = self._limits.max_section - self._section_used
        peeked = _peek_varint(self._buffer, 0)
        if peeked is None:
            return False
        name_length, at = peeked
        if name_length == 0:
            del self._buffer[:at]
            return self._section_end()
        if len(self._fields) == self._limits.max_fields:
            raise TooLarge("fields")
        if at + name_length > room:
            raise TooLarge("field section")
        value_at = _peek_varint(self._buffer, at + name_length)
        if value_at is None:
            return False
        value_length, value_start = value_at
        if value_start + value_length > room:
            raise TooLarge("field section")
        if len(self._buffer) < value_start + value_length:
            return False
        name = bytes(self._buffer[at : at + name_length])
        value = bytes(self._buffer[value_start : value_start + value_length])
        del self._buffer[: value_start + value_length]
        self._section_used += value_start + value_length
        self._fields.append((name, value))
        return True

    def _section_end(self) -> Part | bool:
        fields = tuple(self._fields)
        if self._section == "informational":
            self._informational.append(Informational(self._status, fields))
            self._state = "status"
            return True
        if self._section == "headers":
            self._state, self._chunks = "content", 0
            return Head(self._status, fields, tuple(self._informational))
        self._state, self.finished = "padding", True
        return End(fields)
