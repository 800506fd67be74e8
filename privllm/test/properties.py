"""The Hypothesis profile shared by the property tests: quick by default; set
PRIVLLM_PROPERTY_EXAMPLES=N to run N examples of each property (e.g. 10000 before a release)."""

from __future__ import annotations

import os

from hypothesis import settings


def load_profile() -> None:
    settings.register_profile(
        "privllm", max_examples=int(os.environ.get("PRIVLLM_PROPERTY_EXAMPLES", "100")), deadline=None
    )
    settings.load_profile("privllm")
