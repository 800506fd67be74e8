"""The shared Hypothesis profile: PRIVLLM_PROPERTY_EXAMPLES=10000 runs the property tests longer."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile(
    "privllm", max_examples=int(os.environ.get("PRIVLLM_PROPERTY_EXAMPLES", "100")), deadline=None
)


def load() -> None:
    settings.load_profile("privllm")
