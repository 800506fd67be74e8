"""The upstream layer's base error."""

from __future__ import annotations

__all__ = ["UpstreamError"]


class UpstreamError(Exception):
    """The base of the inference backends' errors. `code`: a short stable name for logs and
    metrics; an instance may carry the backend's own."""

    code = "upstream"
