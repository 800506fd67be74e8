"""
Test equipment: an assistant turn as gpt-oss would stream it, made by openai-harmony itself
(an `analysis` message, then a `final` one with multibyte text), as token ids cut into
irregular llama-server `/completion` events.
"""

from __future__ import annotations

import json
import os
from typing import Any

from openai_harmony import Message, Role

from ..harmony import vocabulary

ANALYSIS = "The user wants coffee facts. SECRET-ANALYSIS: think about 焙煎 first."
FINAL = "Café au lait ☕ mixes coffee and hot milk — 日本ではカフェオレ."
SIZES = (1, 3, 2, 7, 1, 1, 5)


def encoding(tmp: str) -> Any:
    return vocabulary.encoding(os.path.join(tmp, "tiktoken"))


def assistant_tokens(enc: Any, final: str = FINAL, analysis: str = ANALYSIS, channel: str = "final") -> list[int]:
    """The ids after the prompt's `<|start|>assistant`: analysis, then final ending in <|return|>."""
    first = enc.render(Message.from_role_and_content(Role.ASSISTANT, analysis).with_channel("analysis"))
    assert enc.decode_utf8(first[:2]) == "<|start|>assistant"  # already at the end of the prompt
    second = enc.render(Message.from_role_and_content(Role.ASSISTANT, final).with_channel(channel))
    returns = next(t for t in enc.stop_tokens_for_assistant_actions() if enc.decode_utf8([t]) == "<|return|>")
    return first[2:] + second[:-1] + [returns]


def completion_events(tokens: list[int], prompt_tokens: int) -> list[bytes]:
    events, i, n = [], 0, 0
    while i < len(tokens):
        size = SIZES[n % len(SIZES)]
        chunk = tokens[i : i + size]
        events.append(b"data: " + json.dumps({"content": "", "tokens": chunk, "stop": False}).encode() + b"\n\n")
        i, n = i + size, n + 1
    last = {"content": "", "tokens": [], "stop": True, "stop_type": "eos", "tokens_evaluated": prompt_tokens}
    events.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    return events
