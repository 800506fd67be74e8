"""Dev: a llama-server started and supervised by privllm itself, on a socket in the state directory."""

from __future__ import annotations

import os

from twisted.application.service import MultiService

from ..config import Config
from ..upstream.supervisor import LlamaSupervisor, default_binary, default_model, llama_arguments

__all__ = ["LLAMA_SOCKET", "local_llama"]

LLAMA_SOCKET = "llama.sock"


def local_llama(config: Config, root: MultiService, spawn: bool = True) -> tuple[list[str], LlamaSupervisor | None]:
    """Start and supervise llama-server under `root` (when `llama.spawn`); return its URL and supervisor.
    A worker (`spawn` false) uses the one its parent supervises."""
    if not config.llama.spawn:
        return [], None
    socket = os.path.join(config.keys.state_dir, LLAMA_SOCKET)
    if not spawn:
        return [f"unix://{socket}"], None
    llama = config.llama
    args = llama_arguments(
        llama.binary or default_binary(),
        llama.model or default_model(),
        socket,
        llama.parallel,
        llama.ctx_size,
        llama.threads,
        llama.metrics,
    )
    supervisor = LlamaSupervisor(args, socket)
    supervisor.setServiceParent(root)
    return [f"unix://{socket}"], supervisor
