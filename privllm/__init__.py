"""privllm: a private LLM gateway. End-to-end encrypted chat (HPKE) in front of llama-server."""

__version__ = "0.1.0"
