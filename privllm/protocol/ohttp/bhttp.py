"""
Binary HTTP (RFC 9292), known-length form: the plaintext inside Oblivious HTTP.

Indeterminate-length messages (framing indicators 2 and 3) are refused here as Unsupported:
a whole-message encapsulation knows every length. A streamed response, which does not, is
bhttp_stream's. Decoding is strict (RFC 9292 section 3 and the HTTP/2 field
rules it points to) and bounded by explicit limits; names, values and control data stay
bytes, checked against allow-lists. Pseudo-fields are refused outright.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import Malformed, TooLarge, Unsupported
from .wire import Reader, encode_varint

__all__ = [
    "INDETERMINATE_REQUEST",
    "INDETERMINATE_RESPONSE",
    "KNOWN_REQUEST",
    "KNOWN_RESPONSE",
    "MAX_CONTROL",
    "Field",
    "Informational",
    "Limits",
    "Request",
    "Response",
    "check_fields",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

Field = tuple[bytes, bytes]

KNOWN_REQUEST, KNOWN_RESPONSE, INDETERMINATE_REQUEST, INDETERMINATE_RESPONSE = 0, 1, 2, 3
MAX_CONTROL = 8192  # bytes of each of method, scheme, authority and path

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME = _TCHAR - frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # HTTP/2 field names are lowercase
_ALPHA = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SCHEME = _ALPHA | frozenset(b"0123456789+-.")
_VISIBLE = frozenset(range(0x21, 0x7F))
_VALUE_FORBIDDEN = frozenset(b"\x00\r\n")


@dataclass(frozen=True)
class Limits:
    """What a decoder accepts; the encapsulated message size bounds the total already."""

    max_fields: int = 64  # field lines in one section
    max_section: int = 16384  # bytes of one field section
    max_content: int = 1 << 20
    max_informational: int = 4


def check_fields(fields: tuple[Field, ...]) -> None:
    """Names are lowercase tokens, values carry no NUL, CR or LF and no outer whitespace."""
    for name, value in fields:
        if not name or not set(name) <= _NAME:
            raise Malformed("field name")
        if _VALUE_FORBIDDEN & set(value) or value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
            raise Malformed("field value")


@dataclass(frozen=True)
class Request:
    method: bytes
    scheme: bytes
    authority: bytes  # empty where HTTP/2 would omit :authority
    path: bytes
    headers: tuple[Field, ...] = ()
    content: bytes = b""
    trailers: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        if not self.method or not set(self.method) <= _TCHAR:
            raise Malformed("method")
        if not self.scheme or self.scheme[0] not in _ALPHA or not set(self.scheme) <= _SCHEME:
            raise Malformed("scheme")
        if not set(self.authority) <= _VISIBLE or not self.path or not set(self.path) <= _VISIBLE:
            raise Malformed("authority or path")
        check_fields(self.headers)
        check_fields(self.trailers)


@dataclass(frozen=True)
class Informational:
    status: int
    headers: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 199:
            raise Malformed("informational status")
        check_fields(self.headers)


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[Field, ...] = ()
    content: bytes = b""
    trailers: tuple[Field, ...] = ()
    informational: tuple[Informational, ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise Malformed("status")
        check_fields(self.headers)
        check_fields(self.trailers)


def _bytes(value: bytes) -> bytes:
    return encode_varint(len(value)) + value


def _section(fields: tuple[Field, ...]) -> bytes:
    return _bytes(b"".join(_bytes(name) + _bytes(value) for name, value in fields))


def _join(head: bytes, parts: list[bytes], truncate: bool) -> bytes:
    """With `truncate`, drop the empty sections and content at the end (RFC 9292 section 3.8),
    as RFC 9458's example does."""
    while truncate and parts and parts[-1] == b"\x00":
        parts.pop()
    return head + b"".join(parts)


def encode_request(request: Request, truncate: bool = True) -> bytes:
    head = encode_varint(KNOWN_REQUEST) + b"".join(
        map(_bytes, (request.method, request.scheme, request.authority, request.path))
    )
    return _join(head, [_section(request.headers), _bytes(request.content), _section(request.trailers)], truncate)


def encode_response(response: Response, truncate: bool = True) -> bytes:
    head = encode_varint(KNOWN_RESPONSE)
    for info in response.informational:
        head += encode_varint(info.status) + _section(info.headers)
    head += encode_varint(response.status)
    return _join(head, [_section(response.headers), _bytes(response.content), _section(response.trailers)], truncate)


def _bounded(reader: Reader, limit: int) -> bytes:
    length = reader.varint()
    if length > limit:
        raise TooLarge("length")
    return reader.take(length)


def _fields(reader: Reader, limits: Limits) -> tuple[Field, ...]:
    section = Reader(_bounded(reader, limits.max_section))
    fields: list[Field] = []
    while section.remaining:
        if len(fields) == limits.max_fields:
            raise TooLarge("fields")
        fields.append((section.take(section.varint()), section.take(section.varint())))
    return tuple(fields)


def _tail(reader: Reader, limits: Limits) -> tuple[tuple[Field, ...], bytes, tuple[Field, ...]]:
    """Header section, content, trailer section, each possibly truncated (absent reads as
    empty, section 3.8), then zero padding."""
    headers = _fields(reader, limits) if reader.remaining else ()
    content = _bounded(reader, limits.max_content) if reader.remaining else b""
    trailers = _fields(reader, limits) if reader.remaining else ()
    if reader.rest().strip(b"\x00"):
        raise Malformed("non-zero padding")
    return headers, content, trailers


def _framing(reader: Reader, known: int, indeterminate: int) -> None:
    framing = reader.varint()
    if framing == indeterminate:
        raise Unsupported("indeterminate-length Binary HTTP")
    if framing != known:
        raise Malformed("framing indicator")


def decode_request(data: bytes, limits: Limits = Limits()) -> Request:
    reader = Reader(data)
    _framing(reader, KNOWN_REQUEST, INDETERMINATE_REQUEST)
    method, scheme, authority, path = (_bounded(reader, MAX_CONTROL) for _ in range(4))
    headers, content, trailers = _tail(reader, limits)
    return Request(method, scheme, authority, path, headers, content, trailers)


def decode_response(data: bytes, limits: Limits = Limits()) -> Response:
    reader = Reader(data)
    _framing(reader, KNOWN_RESPONSE, INDETERMINATE_RESPONSE)
    informational: list[Informational] = []
    status = reader.varint()
    while 100 <= status <= 199:
        if len(informational) == limits.max_informational:
            raise TooLarge("informational responses")
        informational.append(Informational(status, _fields(reader, limits)))
        status = reader.varint()
    headers, content, trailers = _tail(reader, limits)
    return Response(status, headers, content, trailers, tuple(informational))
