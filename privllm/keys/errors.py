"""The keys layer's base error."""

from __future__ import annotations

__all__ = ["KeysError"]


class KeysError(Exception):
    """The base of the keys layer's errors. `code`: a short stable name for logs and metrics."""

    code = "keys"
