"""The privllm client: a library (`PrivllmClient`) and the `privllm-chat` command."""

from .api import ChatResult, ClientError, NetworkError, PrivllmClient, ProtocolFailure, ServerError, TruncatedError

__all__ = [
    "ChatResult",
    "ClientError",
    "NetworkError",
    "PrivllmClient",
    "ProtocolFailure",
    "ServerError",
    "TruncatedError",
]
