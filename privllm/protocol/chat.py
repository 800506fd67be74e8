"""The decrypted chat request: strict validation with explicit limits, errors that name a field only.

Strings must be Unicode scalar values (JSON's escapes can spell lone surrogates, which no
UTF-8 encoder accepts), the nesting is the request's own (at most 3 levels), and numbers
are bounded; anything else is a sealed `bad_request`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .encoding import EncodingError, is_scalar_text, loads_bounded
from .errors import ProtocolError

__all__ = [
    "FIELDS",
    "MAX_DEPTH",
    "MAX_PLAINTEXT",
    "MAX_TOKENS",
    "REASONING_EFFORT",
    "ROLES",
    "VERBOSITY",
    "BadChatRequest",
    "ChatLimits",
    "ChatRequest",
    "Message",
    "parse_chat_request",
]

ROLES = frozenset({"system", "user", "assistant"})
# The one list of each wire value: the configuration's choices, the instructions and the
# per-level token defaults (`<level>_max_tokens`) follow these.
VERBOSITY = ("brief", "normal", "detailed")
REASONING_EFFORT = ("low", "medium", "high")
FIELDS = frozenset({"messages", "max_tokens", "temperature", "top_p", "verbosity", "reasoning_effort"})
MAX_DEPTH = 3  # {"messages": [{"role": ..., "content": ...}]}
MAX_PLAINTEXT = 1 << 22  # above any body the router accepts (server.max_body_bytes is at most 4 MiB)
MAX_TOKENS = (1 << 31) - 1


@dataclass(frozen=True)
class ChatLimits:
    """No defaults here: they are the configuration's (privllm.config.schema, Config.chat_limits)."""

    max_messages: int
    max_message_chars: int
    max_total_chars: int
    max_tokens: int
    default_verbosity: str
    brief_max_tokens: int
    normal_max_tokens: int
    detailed_max_tokens: int


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    max_tokens: int  # the request's own (within the cap), else its verbosity's default
    temperature: float | None
    top_p: float | None
    verbosity: str  # the request's, else the configured default
    reasoning_effort: str | None


class BadChatRequest(ProtocolError):
    """Sent back sealed as `bad_request`; the message names the field, never its value."""

    code = "bad_request"

    def __init__(self, field: str) -> None:
        super().__init__(f"invalid field: {field}")
        self.field = field


def _number(obj: dict[str, object], name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = obj.get(name)
    if value is None and name not in obj:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise BadChatRequest(name)
    if not (low < value if low_open else low <= value) or not value <= high:
        raise BadChatRequest(name)
    return float(value)


def _choice(obj: dict[str, object], name: str, allowed: tuple[str, ...]) -> str | None:
    if name not in obj:
        return None
    value = obj[name]
    if not isinstance(value, str) or value not in allowed:
        raise BadChatRequest(name)
    return value


def _messages(value: object, limits: ChatLimits) -> tuple[Message, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= limits.max_messages:
        raise BadChatRequest("messages")
    out, total = [], 0
    for item in value:
        if not isinstance(item, dict) or set(item) != {"role", "content"}:
            raise BadChatRequest("messages")
        role, content = item["role"], item["content"]
        if not isinstance(role, str) or role not in ROLES:
            raise BadChatRequest("messages.role")
        if not isinstance(content, str) or len(content) > limits.max_message_chars or not is_scalar_text(content):
            raise BadChatRequest("messages.content")
        total += len(content)
        out.append(Message(role, content))
    if total > limits.max_total_chars:
        raise BadChatRequest("messages")
    if out[-1].role != "user":
        raise BadChatRequest("messages.role")
    return tuple(out)


def parse_chat_request(plaintext: bytes, limits: ChatLimits) -> ChatRequest:
    try:
        obj = loads_bounded(plaintext, MAX_PLAINTEXT, MAX_DEPTH)
    except EncodingError as e:
        raise BadChatRequest("body") from e
    if not isinstance(obj, dict):
        raise BadChatRequest("body")
    if set(obj) - FIELDS:
        raise BadChatRequest("body")
    verbosity = _choice(obj, "verbosity", VERBOSITY) or limits.default_verbosity
    max_tokens = obj.get("max_tokens", getattr(limits, f"{verbosity}_max_tokens"))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS:
        raise BadChatRequest("max_tokens")
    return ChatRequest(
        messages=_messages(obj.get("messages"), limits),
        max_tokens=min(max_tokens, limits.max_tokens),
        temperature=_number(obj, "temperature", 0.0, 2.0),
        top_p=_number(obj, "top_p", 0.0, 1.0, low_open=True),
        verbosity=verbosity,
        reasoning_effort=_choice(obj, "reasoning_effort", REASONING_EFFORT),
    )
