"""
Test equipment: run `twistd -n privllm` as a user would, in a subprocess, with a test config.
It lives here, not in tests/, so the end-to-end tests and the benchmarks share one copy.

The daemon spawns the real llama-server with the real model. Ports are chosen free on
loopback; the daemon's whole output is kept in a file so tests can check what it logged.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

from privllm.keys.material import IDENTITY_PUB, TLS_CERT
from privllm.protocol.encoding import b64decode

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else ("true" if value else "false")


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, `grace` seconds to end, then SIGKILL: test equipment never outlives its test."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Daemon:
    def __init__(
        self,
        sections: dict[str, dict[str, Any]] | None = None,
        name: str = "router",
        role: str = "router",
        env: str = "dev",
        config_file: str | None = None,
        environ: dict[str, str] | None = None,
        ca_file: str | None = None,
        netns: str | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        """`config_file` replaces the generated one; `environ` adds PRIVLLM_* overrides."""
        self.role, self.env, self.environ, self.netns = role, env, environ or {}, netns
        self.prefix = prefix or []  # e.g. ["taskset", "-c", "0"] to pin the daemon to a core
        self.dir = tempfile.mkdtemp(prefix=f"privllm-{name}-")
        self.state_dir = os.path.join(self.dir, "state")
        self.port = free_port()
        self.metrics_port = free_port()
        config: dict[str, dict[str, Any]] = {
            "server": {"port": self.port},
            "metrics": {"port": self.metrics_port},
            "keys": {"state_dir": self.state_dir},
            "backend": {"health_interval": 0.5},
        }
        for section, values in (sections or {}).items():
            config.setdefault(section, {}).update(values)
        self.config_path = config_file or os.path.join(self.dir, "privllm.toml")
        self.ca_file = ca_file or os.path.join(self.state_dir, TLS_CERT)
        if config_file is None:
            with open(self.config_path, "w") as f:
                for section, values in config.items():
                    f.write(f"[{section}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.tmp_dir = os.path.join(self.dir, "tmp")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def llama_socket(self) -> str:
        return os.path.join(self.state_dir, "llama.sock")

    def start(self, wait_ready: bool = True, wait: bool = True) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVLLM_") or k == "PRIVLLM_CACHE"}
        os.makedirs(self.tmp_dir, exist_ok=True)
        env["TMPDIR"] = self.tmp_dir  # so a test can search everything the daemon wrote
        env["PYTHONUNBUFFERED"] = "1"  # the log file is complete the moment a line is logged
        env.update(self.environ)
        with open(self.log_path, "wb") as log:
            argv = [TWISTD, "--pidfile=", "-n", "--logfile=-", "privllm", "--env", self.env, "--role", self.role]
            argv = [*self.prefix, *argv]
            if self.netns:
                argv = ["ip", "netns", "exec", self.netns, *argv]
            self.process = subprocess.Popen(
                [*argv, "--config", self.config_path],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.dir,
            )
        if wait:
            self._wait("/health/ready" if wait_ready else "/health")
        return self

    def _wait(self, path: str, port: int | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"privllm exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get(path, port)[0] == 200:
                    return
            except (OSError, ssl.SSLError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"privllm did not become ready:\n{self.log()}")

    def wait_ready(self, port: int) -> None:
        """After start(wait=False): wait for readiness asked through `port` (a load balancer in front)."""
        self._wait("/health/ready", port)

    async def ready(self, reactor: Any, timeout: float = 20.0) -> None:
        """Wait without blocking the reactor (for tests whose reactor serves the daemon's upstream)."""
        from twisted.internet.task import deferLater

        for _ in range(int(timeout * 10)):
            try:
                if self.get("/health/ready")[0] == 200:
                    return
            except (OSError, ssl.SSLError):
                pass
            await deferLater(reactor, 0.1)
        raise RuntimeError(f"privllm did not become ready:\n{self.log()}")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def get(self, path: str, port: int | None = None, tls: bool = True) -> tuple[int, dict[str, str], bytes]:
        url = (self.url if tls else f"http://127.0.0.1:{self.metrics_port}") + path
        if port is not None:
            url = f"https://127.0.0.1:{port}{path}"
        try:
            with urllib.request.urlopen(url, context=self.ssl_context() if tls else None, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def pin(self) -> bytes:
        with open(os.path.join(self.state_dir, IDENTITY_PUB)) as f:
            return b64decode(f.read().strip(), 32)

    def cert(self) -> bytes:
        with open(self.ca_file, "rb") as f:
            return f.read()

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> int | None:
        if self.process is not None:
            stop_process(self.process, 30)
        return None if self.process is None else self.process.returncode

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_shared: dict[str, Daemon] = {}


def shared(name: str, sections: dict[str, dict[str, Any]] | None = None, wait_ready: bool = True) -> Daemon:
    """One daemon per name for the whole test run (trial has no class fixtures); stopped at exit."""
    if name not in _shared:
        daemon = Daemon(sections, name=name)
        atexit.register(daemon.cleanup)
        _shared[name] = daemon.start(wait_ready)
    return _shared[name]
