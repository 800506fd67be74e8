"""
The log allow-list: only named, non-sensitive fields reach any log output.

`sanitize` is a log observer that the daemon adds to the global publisher before twistd
starts its own output observer; it edits each event in place, so every observer after it
sees only what is allowed:
- fields not on the allow-list are removed (a message that needed one is replaced by a
  line naming the withheld fields, never their values);
- a failure keeps only its exception type: messages and tracebacks can carry request data;
- Twisted's own keys keep their documented types, or go (an observer must not fail on them);
- text written to stdout or stderr (captured by twistd) is withheld;
- `log_system` is dropped: Twisted sets it to the connection's log prefix, which ends
  with the peer's address ("...,3,203.0.113.7"); the output then names the namespace;
- a format may name allowed fields only, plainly (no attribute or index access), and a
  format, namespace or Twisted start-up value that looks like an IP address is withheld.
Requests are named by `request_tag`, a keyed hash of the request id with a per-process
random key, so lines of one request can be matched without the id ever being logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import string
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import LogEvent, LogLevel, globalLogPublisher

__all__ = [
    "ALLOWED",
    "FORMATTABLE",
    "KEPT_META",
    "LATEST",
    "META_VALID",
    "OWN",
    "TWISTED",
    "WITHHELD",
    "has_address",
    "install",
    "request_tag",
    "sanitize",
]

# worker_line: a line of a router worker's own log, already filtered by this list in the worker
OWN = frozenset(
    {"rid", "outcome", "kind", "reason", "ids", "failure_type", "withheld", "category", "node", "worker_line"}
)
# Twisted's start-up and shut-down lines: their values are objects Twisted renders, so each
# is checked for an address like the format itself.
TWISTED = frozenset({"factory", "port", "reactor", "version", "pyVersion", "exe", "pid", "protocol", "reactorClass"})
ALLOWED = OWN | TWISTED
# log_trace is Twisted's own list of (publisher, observer) for debugging: the publisher
# appends to it after this observer, so it must stay; a format may not show it.
KEPT_META = frozenset({"log_format", "log_level", "log_namespace", "log_time", "log_trace"})
FORMATTABLE = (ALLOWED | KEPT_META) - {"log_trace"}
WITHHELD = "message withheld (fields: {withheld})"
LATEST = 2.0**33  # seconds since 1970, in the year 2242: output observers cannot format times past 9999
_LEVELS = frozenset(LogLevel.iterconstants())
META_VALID: dict[str, Callable[[Any], bool]] = {
    "log_format": lambda v: isinstance(v, str),
    "log_namespace": lambda v: isinstance(v, str),
    "log_time": lambda v: isinstance(v, float) and 0 <= v < LATEST,  # NaN fails too
    "log_level": lambda v: v in _LEVELS,
    "log_trace": lambda v: isinstance(v, list),
}
# Address shapes, loose on purpose (a false alarm only withholds a line): four dotted
# numbers anywhere, or a run of hex digits and colons with two colons or more.
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IPV6 = re.compile(r"[0-9A-Fa-f:]*[0-9A-Fa-f][0-9A-Fa-f:]*")
_PROCESS_KEY = os.urandom(32)  # never stored: tags cannot be linked across restarts
_formatter = string.Formatter()


def request_tag(request_id: str) -> str:
    return hmac.new(_PROCESS_KEY, request_id.encode(), hashlib.sha256).hexdigest()[:16]


def has_address(text: str) -> bool:
    """True if `text` holds anything shaped like an IPv4 or IPv6 address (with or without a port)."""
    return bool(_IPV4.search(text)) or any(m.group().count(":") >= 2 for m in _IPV6.finditer(text))


def _referenced(fmt: str) -> set[str] | None:
    """The field names a format uses, exactly as written; None if it cannot be parsed."""
    names: set[str] = set()
    try:
        for _, field, spec, _ in _formatter.parse(fmt):
            if field is not None:
                names.add(field)  # "a.b", "a[0]", "a()" and "" stay as written: never allowed
            nested = _referenced(spec) if spec else set()
            if nested is None:
                return None
            names |= nested
    except ValueError:
        return None
    return names


def _shows_address(event: LogEvent) -> bool:
    values = [event.get("log_format"), event.get("log_namespace")]
    values += [event[k] for k in TWISTED if k in event]
    for value in values:
        try:
            if value is not None and has_address(str(value)):
                return True
        except Exception:  # an object whose str() fails cannot be checked: withhold it
            return True
    return False


def sanitize(event: LogEvent) -> None:
    """Edit `event` in place; if that fails, nothing of it is left (every observer after this
    one would otherwise see it unedited)."""
    try:
        _sanitize(event)
    except Exception as e:
        trace = event.get("log_trace")
        event.clear()
        if isinstance(trace, list):
            event["log_trace"] = trace
        event["log_time"] = time.time()
        event["failure_type"] = type(e).__qualname__
        event["log_format"] = "message withheld (the allow-list failed: {failure_type})"
        event["log_level"] = LogLevel.error
        event["log_namespace"] = __name__


def _sanitize(event: LogEvent) -> None:
    event.pop("log_system", None)
    for key, valid in META_VALID.items():
        if key in event and not valid(event[key]):
            del event[key]
    event.setdefault("log_time", time.time())  # legacy observers after this one need it
    failure: Any = event.pop("log_failure", None)
    if failure is None and "failure" in event:  # twisted.python.log.err: its text may quote data
        failure = event.pop("failure")
        event["log_format"] = "failure"
    if failure is not None:
        event["failure_type"] = getattr(getattr(failure, "type", None), "__qualname__", "unknown")
        event["log_format"] = (event.get("log_format") or "failure") + " [{failure_type}]"
    if "log_io" in event:
        event["log_format"] = "output on stdout or stderr withheld"
    withheld = sorted(k for k in event if k not in ALLOWED and k not in KEPT_META)
    if _shows_address(event):
        withheld = sorted({*withheld, "address", *(k for k in TWISTED if k in event)})
        event["log_namespace"] = "withheld"
        event["log_format"] = None
    for key in withheld:
        event.pop(key, None)
    fmt = event.get("log_format")
    used = _referenced(fmt) if isinstance(fmt, str) else None
    if used is None or not used <= FORMATTABLE & set(event):
        # Only names a programmer wrote are shown: a key that is not an identifier could be data.
        event["withheld"] = ", ".join(k if k.isidentifier() else "?" for k in withheld) or "format"
        event["log_format"] = WITHHELD


_installed = False


def install() -> None:
    """Put `sanitize` in front of every output observer twistd adds later."""
    global _installed
    if not _installed:
        globalLogPublisher.addObserver(sanitize)  # type: ignore[arg-type]
        _installed = True
