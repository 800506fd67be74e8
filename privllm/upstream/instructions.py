"""Answers sized for a phone: what each verbosity level asks of the model."""

from __future__ import annotations

__all__ = ["INSTRUCTIONS"]

INSTRUCTIONS = {
    "brief": (
        "Answer in 2-3 sentences for simple questions. Plain text for a phone screen: "
        "no tables, no headings, and no lists unless the user asks for one."
    ),
    "normal": (
        "Answer clearly in a few short paragraphs at most. Use a list only when it really helps; "
        "no tables unless the user asks for one."
    ),
    "detailed": (
        "Answer thoroughly: explain the reasoning step by step, give examples, "
        "and use headings or lists where they help the reader."
    ),
}
