"""
Test equipment (tests and benchmarks): Debian's nginx as an Oblivious HTTP relay (RFC 9458 section 6.1), the way a
third party would run one in front of privllm's gateway.

It terminates the client's TLS with a certificate of its own, forwards only the two v2 routes
to the router over TLS (verifying the router's certificate), passes the encapsulated body, the
content type and the proof-of-work header, and nothing that names the client: no
X-Forwarded-For, X-Real-IP or Forwarded, no cookies or user agent. Answers stream through
unbuffered. Its connections to the router come from `source`, so a test can tell the relay
from a client at the router.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time

from privllm.test.stack import free_port, stop_process

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT = 10.0


V2_ROUTES = ("/api/ohttp", "/api/ohttp-keys")


def config(
    directory: str,
    port: int,
    router_port: int,
    router_ca: str,
    cert: str,
    key: str,
    source: str,
    routes: tuple[str, ...],
) -> str:
    location = (
        "        proxy_pass https://router;\n"
        f"        proxy_bind {source};\n"
        "        proxy_http_version 1.1;\n"
        "        proxy_ssl_verify on;\n"
        f"        proxy_ssl_trusted_certificate {router_ca};\n"
        "        proxy_ssl_name localhost;\n"  # nginx checks DNS names only, not IP addresses
        "        proxy_buffering off;\n"
        "        proxy_pass_request_headers off;\n"
        "        proxy_set_header Host 127.0.0.1;\n"
        "        proxy_set_header Content-Type $content_type;\n"
        "        proxy_set_header Content-Length $content_length;\n"
        "        proxy_set_header Privllm-Pow $http_privllm_pow;\n"
        '        proxy_set_header Accept-Encoding "";\n'
        '        proxy_set_header Connection "";\n'  # kept-alive connections to the router
    )
    locations = "".join(f"        location = {route} {{\n{location}        }}\n" for route in routes)
    return (
        "daemon off;\nmaster_process off;\nworker_processes 1;\n"
        f"pid {directory}/nginx.pid;\nerror_log {directory}/error.log warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    access_log off;\n"  # a relay keeps no log of who asked: the test searches only the router
        f"    client_body_temp_path {directory}/body;\n    proxy_temp_path {directory}/proxy;\n"
        f"    fastcgi_temp_path {directory}/fcgi;\n    uwsgi_temp_path {directory}/uwsgi;\n"
        f"    scgi_temp_path {directory}/scgi;\n"
        f"    upstream router {{\n        server 127.0.0.1:{router_port};\n        keepalive 8;\n    }}\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} ssl;\n"
        f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
        "        client_max_body_size 512k;\n"
        f"{locations}"
        "        location / { return 404; }\n"
        "    }\n"
        "}\n"
    )


class Relay:
    def __init__(
        self, router_port: int, router_ca: str, cert: str, key: str, source: str, routes: tuple[str, ...] = V2_ROUTES
    ) -> None:
        """`cert`, `key`: the relay's own TLS pair for its clients; `router_ca`: what signs the
        router's certificate; `source`: the loopback address the relay's connections come from;
        `routes`: the paths it forwards (a benchmark also passes v1's, as a plain reverse proxy)."""
        self.dir = tempfile.mkdtemp(prefix="privllm-relay-")
        self.port = free_port()
        self.config_path = os.path.join(self.dir, "nginx.conf")
        with open(self.config_path, "w") as f:
            f.write(config(self.dir, self.port, router_port, router_ca, cert, key, source, routes))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Relay:
        subprocess.run([NGINX, "-t", "-q", "-c", self.config_path, "-p", self.dir], check=True)
        with open(os.path.join(self.dir, "out.log"), "wb") as out:
            self.process = subprocess.Popen(
                [NGINX, "-c", self.config_path, "-p", self.dir], stdout=out, stderr=subprocess.STDOUT, cwd=self.dir
            )
        atexit.register(self.cleanup)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen:\n{self.log()}")

    def log(self) -> str:
        text = ""
        for name in ("out.log", "error.log"):
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f.read()
        return text

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, 5.0)
        shutil.rmtree(self.dir, ignore_errors=True)
