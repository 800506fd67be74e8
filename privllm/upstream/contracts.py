"""
What the router's chat (privllm.web.chat.ChatStream) needs of a node, spelled out for mypy.

A node is a client (LlamaServer, or a test's synthetic upstream) and a dialect (the
OpenAI-compatible ChatDialect, or privllm.harmony's HarmonyDialect); the dialect makes a
translator for each attempt. These are structural: a class satisfies one by having the
members, without naming it.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from ..protocol.chat import ChatRequest
from ..protocol.life import Finished
from .events import Delta

__all__ = ["Dialect", "Translator", "UpstreamClient"]


class Translator(Protocol):
    """Turns one upstream response body into the chat's deltas and its end."""

    @property
    def upstream_complete(self) -> bool:
        """The node said its answer is complete: the response ends, its connection is reusable."""

    def feed(self, data: bytes) -> list[Delta | Finished]: ...

    def end(self) -> list[Delta | Finished]:
        """The body ended; raises UpstreamProtocolError when the answer was cut short."""


class Dialect(Protocol):
    """How to ask a node for a chat: the request body, its size in tokens, the endpoint."""

    @property
    def path(self) -> str: ...

    def body(self, chat: ChatRequest) -> dict[str, Any]: ...

    def prompt_bounds(self, body: dict[str, Any]) -> tuple[int, int]:
        """Lower and upper bounds on the prompt's tokens, known without asking the node."""

    def count_text(self, body: dict[str, Any]) -> str:
        """What the node's tokenizer counts when the bounds cannot decide."""

    def counted_lower(self, body: dict[str, Any], tokens: int) -> int:
        """A lower bound on the prompt's tokens from the node's count of `count_text`."""

    def translator(self, body: dict[str, Any]) -> Translator: ...


class UpstreamClient(Protocol):
    """The connection to one node, as a chat uses it (the health monitor gets its own probe)."""

    @property
    def context(self) -> int | None:
        """Tokens per slot, once learned from the node; None until then."""

    def count_tokens(self, text: str) -> Deferred[int]: ...

    def post_stream(self, path: str, body: dict[str, Any]) -> Deferred[Any]:
        """Send `body`; fires with the response (an IResponse) once its headers arrive."""
