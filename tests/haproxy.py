"""
Test equipment: Debian's haproxy in TCP mode in front of routers, sending each connection's
client address in a PROXY v2 header (`send-proxy-v2`), as a deployment's load balancer would.

It runs in the foreground (`-db`) from a config in its own temporary directory, listens on a
free loopback port and is killed by `stop`. `source` picks the loopback address its connections
to the routers come from, so a test can allow only that address at the routers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time

from privllm.test.stack import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
START_TIMEOUT = 10.0


def config(port: int, backends: list[int], source: str | None, check: bool, own_ports: list[int]) -> str:
    def server(i: int, backend: int) -> str:
        return (
            f"    server r{i} 127.0.0.1:{backend} send-proxy-v2"
            + (f" source {source}" if source else "")
            + (" check inter 1s" if check else "")
            + "\n"
        )

    servers = "".join(server(i, backend) for i, backend in enumerate(backends))
    # One frontend per router too, so a test can choose which router a request reaches.
    own = "".join(
        f"frontend to_r{i}\n    bind 127.0.0.1:{own_port}\n    default_backend only_r{i}\n"
        f"backend only_r{i}\n{server(i, backends[i])}"
        for i, own_port in enumerate(own_ports)
    )
    return (
        "global\n    maxconn 512\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 10m\n    timeout server 10m\n"
        f"frontend public\n    bind 127.0.0.1:{port}\n    default_backend routers\n"
        f"backend routers\n    balance roundrobin\n{servers}{own}"
    )


class HAProxy:
    def __init__(
        self, backends: list[int], source: str | None = None, check: bool = True, per_router: bool = False
    ) -> None:
        """`backends`: the routers' ports on 127.0.0.1; `check`: haproxy's TCP health checks,
        which carry a PROXY v2 LOCAL header; `per_router`: also one port per router
        (`router_ports`), besides the balanced `port`."""
        self.dir = tempfile.mkdtemp(prefix="privllm-haproxy-")
        self.port = free_port()
        self.router_ports = [free_port() for _ in backends] if per_router else []
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        with open(self.config_path, "w") as f:
            f.write(config(self.port, backends, source, check, self.router_ports))
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        subprocess.run([HAPROXY, "-c", "-q", "-f", self.config_path], check=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [HAPROXY, "-db", "-f", self.config_path], stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
            )
        atexit.register(self.cleanup)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not listen:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
