"""The state layer's base error."""

from __future__ import annotations

__all__ = ["StateError"]


class StateError(Exception):
    """The base of the admission state's errors. `code`: a short stable name for logs and metrics."""

    code = "state"
