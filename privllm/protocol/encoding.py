"""Strict encodings shared by both ends: base64 with exact lengths, JSON read with bounds, and
RFC 8785 (JCS) JSON."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import orjson

from .errors import ProtocolError

__all__ = [
    "MAX_JSON_DEPTH",
    "EncodingError",
    "b64decode",
    "b64encode",
    "canonical_json",
    "dumps",
    "is_scalar_text",
    "loads_bounded",
]


class EncodingError(ProtocolError, ValueError):
    """A value is not in the exact form the protocol requires."""

    code = "malformed"


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(value: object, length: int | None = None, max_length: int | None = None) -> bytes:
    """Decode standard base64 with padding (RFC 4648 section 4); reject anything else."""
    if not isinstance(value, str):
        raise EncodingError("not a string")
    if max_length is not None and len(value) > 4 * ((max_length + 2) // 3):
        raise EncodingError("too long")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise EncodingError("bad base64") from e
    if b64encode(raw) != value:
        # Non-canonical encodings (non-zero pad bits) would give one value two spellings.
        raise EncodingError("non-canonical base64")
    if length is not None and len(raw) != length:
        raise EncodingError("wrong length")
    return raw


MAX_JSON_DEPTH = 32  # no message of the protocol, the key set or llama-server's stream nests deeper
# orjson reads an integer beyond 64 bits as a float; a run of 19 digits may be one. Such
# text goes to the standard library, which keeps integers exact (and so their meaning).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_STR = re.compile(r"[0-9]{19}")


def _reject_constant(name: str) -> None:
    raise ValueError(name)  # NaN, Infinity, -Infinity are not JSON


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # made once: json.loads(..., kw) makes one a call


def _decode(data: bytes | bytearray | str) -> Any:
    """orjson, strict (RFC 8259), for most text; the standard library for long numbers."""
    if isinstance(data, str):
        if _LONG_DIGITS_STR.search(data) is None:
            return orjson.loads(data)
        return _DECODER.decode(data)
    if _LONG_DIGITS.search(data) is None:
        return orjson.loads(data)
    return _DECODER.decode(data.decode("utf-8"))


def _depth_within(value: Any, max_depth: int) -> bool:
    """Iterative, so a deep value cannot exhaust the stack here."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > max_depth:
                return False
            stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return True


def loads_bounded(data: bytes | bytearray | str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from a peer, with its size and nesting bounded: EncodingError for anything else,
    so a caller has one exception to handle.

    Both decoders refuse NaN and Infinity, invalid UTF-8 and control characters, and keep
    the last of duplicate names. orjson also refuses lone surrogates (escaped or not) and
    numbers that overflow a double (1e400); the standard library lets them through to the
    field checks, which still refuse them."""
    if len(data) > max_bytes:
        raise EncodingError("too large")
    try:
        value = _decode(data)
    except (ValueError, RecursionError) as e:  # both JSONDecodeErrors and UnicodeDecodeError are ValueErrors
        raise EncodingError("not JSON") from e
    # Nesting needs an opening bracket per level: most messages have too few to need the walk.
    brackets = data.count("[") + data.count("{") if isinstance(data, str) else data.count(b"[") + data.count(b"{")
    if brackets > max_depth and not _depth_within(value, max_depth):
        raise EncodingError("nested too deeply")
    return value


def is_scalar_text(text: str) -> bool:
    """True when every code point is a Unicode scalar value: JSON's \\ud800 escapes decode to
    lone surrogates, which no UTF-8 encoder (ours, llama-server's) can write."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_jcs_value(value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, float):
        raise EncodingError("only strings, integers, arrays and objects are signed")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError("object keys must be strings")
            _check_jcs_value(item)
    elif isinstance(value, list):
        for item in value:
            _check_jcs_value(item)
    elif not isinstance(value, (str, int)):
        raise EncodingError(f"unsupported type {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """
    RFC 8785 (JCS) for the subset the protocol signs: strings, integers, arrays, objects.

    With no floats, JCS reduces to UTF-8 JSON with member names sorted by UTF-16 code
    units and no whitespace; our member names are ASCII, where that equals code-point order.
    """
    _check_jcs_value(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON for messages on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
