"""The Harmony dialect's base error."""

from __future__ import annotations

__all__ = ["HarmonyError"]


class HarmonyError(Exception):
    """The base of the Harmony dialect's errors. `code`: a short stable name for logs and metrics."""

    code = "harmony"
