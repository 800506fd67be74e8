"""
Cross-origin answers for browsers, fed the request's raw headers and nothing else.

Only an Origin equal to one of the configured origins, byte for byte, is named back in
`Access-Control-Allow-Origin`; never `*`, never credentials (the router has no cookies, and
a sealed request needs none). The preflights answered are the ones a browser sends before a
chat: method POST, and only the request headers that route reads (`content-type` for v1's
`POST /api/chat`; `content-type` and `privllm-pow` for v2's `POST /api/ohttp`, whose
`message/ohttp-req` is not a CORS-safelisted type). Anything else gets no CORS header, so the
browser keeps the answer from the page.

Origins are not secrets (every allowed page shows its own), so a set lookup is enough.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .v2.admission import POW_HEADER
from .v2.keys import HEADERS as KEYS_HEADERS

__all__ = [
    "ALLOWED_HEADERS",
    "ALLOWED_METHOD",
    "EXPOSED",
    "KEYS_EXPOSED",
    "MAX_AGE",
    "MAX_ORIGIN",
    "MAX_REQUEST_HEADERS",
    "OHTTP_HEADERS",
    "CorsPolicy",
    "Headers",
    "Preflight",
    "check_origin",
]

MAX_ORIGIN = 300  # scheme, a 253-character host name and a port
MAX_REQUEST_HEADERS = 1024  # Access-Control-Request-Headers: a browser sends a few names
MAX_AGE = b"600"  # seconds a browser may reuse a preflight; browsers cap it at 2 h (Chromium) or 24 h
ALLOWED_METHOD = b"POST"
ALLOWED_HEADERS = frozenset({b"content-type"})  # what POST /api/chat reads
OHTTP_HEADERS = frozenset({b"content-type", POW_HEADER})  # what POST /api/ohttp reads
# What a page must read beyond the CORS-safelisted headers: when to retry after a 429 or 503,
# and the router's clock after a 401 stale.
EXPOSED = b"retry-after, date"
# GET /api/ohttp-keys: the signature of the key configurations travels in these headers.
KEYS_EXPOSED = b", ".join((EXPOSED, *KEYS_HEADERS))

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_ORIGIN = re.compile(rf"(https?)://({_LABEL}(?:\.{_LABEL})*)(?::([1-9][0-9]{{0,4}}))?")
_LOOPBACK = frozenset({"localhost", "127.0.0.1"})
_DEFAULT_PORT = {"https": "443", "http": "80"}

Headers = tuple[tuple[bytes, bytes], ...]


def check_origin(entry: str, allow_http_loopback: bool) -> str | None:
    """Why `entry` is not an origin a browser would send (None: it is). A browser serialises
    its origin as a lowercase scheme and host, and leaves the scheme's default port out."""
    if entry == "*":
        return "a wildcard would let every site read the answers: name each origin"
    if len(entry) > MAX_ORIGIN:
        return f"longer than {MAX_ORIGIN} characters"
    match = _ORIGIN.fullmatch(entry)
    if match is None:
        return f"{entry!a} must be https://host[:port] in lowercase, with no path, query or trailing slash"
    scheme, host, port = match.groups()
    if port is not None and (int(port) > 65535 or port == _DEFAULT_PORT[scheme]):
        return f"{entry!a}: a port between 1 and 65535, and not the default (a browser leaves it out)"
    if scheme == "http" and not (allow_http_loopback and host in _LOOPBACK):
        return f"{entry!a} must use https (http only for localhost or 127.0.0.1, in dev)"
    return None


@dataclass(frozen=True)
class Preflight:
    allowed: bool
    headers: Headers


class CorsPolicy:
    """The allow-list and the two decisions: headers for an answer, and a preflight."""

    def __init__(self, origins: Iterable[str]) -> None:
        self._origins = frozenset(o.encode("ascii") for o in origins)

    @property
    def enabled(self) -> bool:
        return bool(self._origins)

    def answer(self, origin: Sequence[bytes] | None, exposed: bytes = EXPOSED) -> Headers:
        """Headers for any answer, exposing `exposed`. `Vary: Origin` goes on every answer once
        CORS is on: the answer differs by Origin, and a shared cache must not hand one origin's
        to another."""
        if not self.enabled:
            return ()
        allowed = self._allowed(origin)
        if allowed is None:
            return ((b"vary", b"Origin"),)
        return (
            (b"vary", b"Origin"),
            (b"access-control-allow-origin", allowed),
            (b"access-control-expose-headers", exposed),
        )

    def is_preflight(self, origin: Sequence[bytes] | None, method: Sequence[bytes] | None) -> bool:
        """An OPTIONS with an Origin and Access-Control-Request-Method; any other OPTIONS
        is an ordinary request for a method the route does not have."""
        return self.enabled and bool(origin) and bool(method)

    def preflight(
        self,
        origin: Sequence[bytes] | None,
        method: Sequence[bytes] | None,
        request_headers: Sequence[bytes] | None,
        route_headers: frozenset[bytes] = ALLOWED_HEADERS,
    ) -> Preflight:
        """Allowed only for an allowed origin, POST, and request headers among `route_headers`
        (the ones the route reads)."""
        allowed = self._allowed(origin)
        if (
            allowed is None
            or method is None
            or list(method) != [ALLOWED_METHOD]
            or not _headers_ok(request_headers, route_headers)
        ):
            return Preflight(False, ((b"vary", b"Origin"),))
        return Preflight(
            True,
            (
                (b"vary", b"Origin"),
                (b"access-control-allow-origin", allowed),
                (b"access-control-allow-methods", ALLOWED_METHOD),
                (b"access-control-allow-headers", b", ".join(sorted(route_headers))),
                (b"access-control-max-age", MAX_AGE),
            ),
        )

    def _allowed(self, origin: Sequence[bytes] | None) -> bytes | None:
        """The one Origin header, when it is allowed. Two Origin headers are no browser's."""
        if origin is None or len(origin) != 1 or len(origin[0]) > MAX_ORIGIN:
            return None
        return origin[0] if origin[0] in self._origins else None


def _headers_ok(values: Sequence[bytes] | None, route_headers: frozenset[bytes]) -> bool:
    """Access-Control-Request-Headers names only headers the route reads."""
    if values is None:
        return True
    if len(values) != 1 or len(values[0]) > MAX_REQUEST_HEADERS:
        return False
    names = {name.strip().lower() for name in values[0].split(b",")}
    names.discard(b"")
    return names <= route_headers
