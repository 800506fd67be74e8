"""The errors of protocol v1: plaintext ones before decryption, sealed ones after."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rejection:
    """A plaintext refusal: nothing from the request is echoed back."""

    status: int
    code: str


MALFORMED = Rejection(400, "malformed")
TOO_LARGE = Rejection(413, "too_large")
UNKNOWN_KEY = Rejection(422, "unknown_key")
STALE = Rejection(401, "stale")
DECRYPT_FAILED = Rejection(400, "decrypt_failed")
REPLAY = Rejection(409, "replay")
RATE_LIMITED = Rejection(429, "rate_limited")
UNAVAILABLE = Rejection(503, "unavailable")
POW_REQUIRED = Rejection(429, "pow_required")
NOT_FOUND = Rejection(404, "not_found")
METHOD_NOT_ALLOWED = Rejection(405, "method_not_allowed")
UNSUPPORTED_MEDIA_TYPE = Rejection(415, "unsupported_media_type")


class RequestRejected(Exception):
    """Raised by the sans-IO request checks; the adapter turns it into a plaintext reply."""

    def __init__(
        self, rejection: Rejection, retry_after: int | None = None, body: dict[str, object] | None = None
    ) -> None:
        super().__init__(rejection.code)
        self.rejection = rejection
        self.retry_after = retry_after
        self.body = body  # replaces {"error": code}, e.g. a proof-of-work challenge
