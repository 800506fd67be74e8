"""
The log allow-list: only named, non-sensitive fields reach any log output.

`sanitize` is a log observer that the daemon adds to the global publisher before twistd
starts its own output observer; it edits each event in place, so every observer after it
sees only what is allowed:
- fields not on the allow-list are removed (a message that needed one is replaced by a
  line naming the withheld fields, never their values);
- a failure keeps only its exception type: messages and tracebacks can carry request data;
- text written to stdout or stderr (captured by twistd) is withheld.
Requests are named by `request_tag`, a keyed hash of the request id with a per-process
random key, so lines of one request can be matched without the id ever being logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import string
from typing import Any

from twisted.logger import LogEvent, globalLogPublisher

ALLOWED = frozenset(
    {
        # privllm's own fields
        "rid", "outcome", "kind", "reason", "ids", "failure_type", "withheld", "category", "node",
        # Twisted's start-up and shut-down lines
        "factory", "port", "reactor", "version", "pyVersion", "exe", "pid", "protocol", "reactorClass",
    }
)  # fmt: skip
KEPT_META = frozenset({"log_format", "log_level", "log_namespace", "log_time", "log_system", "log_logger"})
_PROCESS_KEY = os.urandom(32)  # never stored: tags cannot be linked across restarts
_formatter = string.Formatter()


def request_tag(request_id: str) -> str:
    return hmac.new(_PROCESS_KEY, request_id.encode(), hashlib.sha256).hexdigest()[:16]


def _referenced(fmt: str) -> set[str]:
    names = set()
    for _, field, _, _ in _formatter.parse(fmt):
        if field:
            names.add(field.split(".", 1)[0].split("[", 1)[0].split("!", 1)[0])
    return names


def sanitize(event: LogEvent) -> None:
    failure: Any = event.pop("log_failure", None)
    if failure is None and "failure" in event:  # twisted.python.log.err: its text may quote data
        failure = event.pop("failure")
        event["log_format"] = "failure"
    if failure is not None:
        event["failure_type"] = getattr(failure.type, "__qualname__", "unknown")
        event["log_format"] = (event.get("log_format") or "failure") + " [{failure_type}]"
    if "log_io" in event:
        event["log_format"] = "output on stdout or stderr withheld"
    withheld = sorted(k for k in event if k not in ALLOWED and k not in KEPT_META)
    for key in withheld:
        del event[key]
    fmt = event.get("log_format")
    if not isinstance(fmt, str) or not _referenced(fmt) <= (ALLOWED | KEPT_META) & set(event):
        event["withheld"] = ", ".join(withheld) or "format"
        event["log_format"] = "message withheld (fields: {withheld})"


_installed = False


def install() -> None:
    """Put `sanitize` in front of every output observer twistd adds later."""
    global _installed
    if not _installed:
        globalLogPublisher.addObserver(sanitize)  # type: ignore[arg-type]
        _installed = True
