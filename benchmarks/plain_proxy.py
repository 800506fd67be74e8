"""
The same capacity ramp through nginx, a plain SSE reverse proxy with TLS and no encryption
of its own, in front of the same synthetic upstream: the ratio privllm / nginx says what
HPKE sealing and Python cost. nginx (Debian's package) runs one worker, pinned to the
router's core.

    python -m benchmarks.plain_proxy [--levels 10,100,500,1000,2000] [--out plain_proxy.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from typing import Any

from privllm.keys.files import ensure_private_dir
from privllm.keys.material import ensure_dev_certificate
from privllm.test.stack import free_port  # test equipment, shared with tests/

from . import loadgen
from .capacity import cpu_seconds, ramp_arguments, ramp_levels, start_upstream
from .report import machine, percentile, write_report

NGINX_CONF = """
user {user};
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    upstream synthetic {{ server unix:{socket}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://synthetic;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


DELTA_EVENT = b'data: {"choices":[{"delta":{"content"'  # the upstream's deltas, as nginx passes them on
DEADLINE = 60.0  # seconds after the ramp: streams still open are abandoned


def level(port: int, cert: bytes, pid: int, streams: int, rate: float, ramp: float) -> dict[str, Any]:
    """`streams` plain chats through nginx, started over `ramp` seconds by benchmarks.loadgen,
    the load generator the capacity benchmark uses, so both runs face the same equipment."""
    body = json.dumps({"messages": [{"role": "user", "content": "go"}], "stream": True}).encode()
    starts = [ramp * i / streams for i in range(streams)]
    cpu_before, start = cpu_seconds(pid), time.perf_counter()
    result = loadgen.run(
        "127.0.0.1", port, cert, [body] * streams, starts, ramp + DEADLINE, "/v1/chat/completions", DELTA_EVENT
    )
    wall = time.perf_counter() - start
    added = [(b - a) * 1000 - 1000 / rate for stream in result.arrivals for a, b in pairwise(stream[1:])]
    return {
        "streams": streams,
        "completed": sum(1 for a in result.arrivals if a),
        "errors": result.errors,
        "events_per_second": sum(len(a) for a in result.arrivals) / wall,
        "added_interchunk_delay_ms_p50": percentile(added, 0.5),
        "added_interchunk_delay_ms_p99": percentile(added, 0.99),
        "proxy_cpu_percent": 100 * (cpu_seconds(pid) - cpu_before) / wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ramp_arguments(p)
    p.add_argument("--out", default="plain_proxy.json")
    args = p.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        sys.exit("nginx is not installed (apt-get install nginx-light)")
    os.sched_setaffinity(0, {1})
    workdir = tempfile.mkdtemp(prefix="privllm-nginx-")
    socket = os.path.join(workdir, "upstream.sock")
    upstream = start_upstream(socket, args.rate, args.deltas, "1")
    ensure_private_dir(os.path.join(workdir, "tls"))
    cert, key = ensure_dev_certificate(os.path.join(workdir, "tls"), ["127.0.0.1"])
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        user = pwd.getpwuid(os.getuid()).pw_name  # the worker must reach the upstream's socket
        f.write(NGINX_CONF.format(user=user, dir=workdir, socket=socket, port=port, cert=cert, key=key))
    proxy = subprocess.Popen(["taskset", "-c", "0", nginx, "-c", conf, "-g", "daemon off;"])
    time.sleep(1.0)
    try:
        workers = subprocess.run(["pgrep", "-P", str(proxy.pid)], capture_output=True, text=True).stdout.split()
        worker = int(workers[0]) if workers else proxy.pid

        with open(cert, "rb") as pem:
            root = pem.read()
        report: dict[str, Any] = {"machine": machine(), "rate_per_stream": args.rate, "levels": []}
        for n, ramp in ramp_levels(args):
            report["levels"].append(level(port, root, worker, n, args.rate, ramp))
        write_report(report, args.out)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        upstream.terminate()
        upstream.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
