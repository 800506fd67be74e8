"""The errors of protocol v1: plaintext ones before decryption, sealed ones after."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DECRYPT_FAILED",
    "MALFORMED",
    "METHOD_NOT_ALLOWED",
    "NOT_FOUND",
    "POW_REQUIRED",
    "RATE_LIMITED",
    "REFUSAL_REASONS",
    "REPLAY",
    "STALE",
    "TOO_LARGE",
    "UNAVAILABLE",
    "UNKNOWN_KEY",
    "UNSUPPORTED_MEDIA_TYPE",
    "ProtocolError",
    "Rejection",
    "RequestRejected",
    "refusal_reason",
]


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


# Which abuse or capacity control refused a request: the values of the metric
# privllm_refusals_total's `reason` label (an allow-list, so no label ever carries request data).
REFUSAL_REASONS = frozenset(
    {
        "address_rate",  # the address's request rate
        "device_rate",  # the device's request rate (sealed)
        "stream_cap",  # the global, per-address or per-device stream cap
        "pow_required",  # proof of work asked, or not good enough
        "pow_store_full",  # no room left to remember spent proofs of work
        "replay",  # seen before
        "replay_room",  # the replay window is full, for the address or for everyone
        "no_node",  # no inference node ready, or the node queue full or timed out
        "state_unavailable",  # the shared admission state (Redis) did not answer, or refused this router
    }
)


def refusal_reason(reason: str | None) -> str | None:
    if reason is not None and reason not in REFUSAL_REASONS:
        raise ValueError(f"unknown refusal reason {reason!r}")
    return reason


class ProtocolError(Exception):
    """The base of the protocol layer's errors. `code`: a short stable name for logs, metrics
    and, where the error is answered on the wire, the wire code; an instance may carry a more
    precise one."""

    code = "protocol"


class RequestRejected(ProtocolError):
    """Raised by the sans-IO request checks; the adapter turns it into a plaintext reply."""

    code = "rejected"

    def __init__(
        self,
        rejection: Rejection,
        retry_after: int | None = None,
        body: dict[str, object] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(rejection.code)
        self.code = rejection.code
        self.rejection = rejection
        self.retry_after = retry_after
        self.body = body  # replaces {"error": code}, e.g. a proof-of-work challenge
        self.reason = refusal_reason(reason)  # set when an abuse or capacity control refused
