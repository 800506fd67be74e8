"""
Test equipment: Debian's Prometheus scraping routers' metrics listeners, as a deployment's
monitoring would, and its promtool to check expressions.

Prometheus runs from a generated config in its own temporary directory (its database too),
listens on a free loopback port and is stopped by `stop`; every wait is bounded.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from privllm.test.stack import free_port, stop_process

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
START_TIMEOUT = 30.0
JOB = "privllm"  # the job name docs/monitoring and the alert rules use
LLAMA_JOB = "llama"  # llama-server's own metrics, passed through at /llama/metrics


def scrape_config(targets: list[str], interval: str = "1s") -> str:
    """A Prometheus config scraping `targets` (host:port of metrics listeners) as job privllm,
    and their /llama/metrics as job llama. JSON is YAML, so no YAML writer is needed."""
    static = [{"targets": targets}]
    return json.dumps(
        {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {"job_name": JOB, "static_configs": static},
                {"job_name": LLAMA_JOB, "metrics_path": "/llama/metrics", "static_configs": static},
            ],
        },
        indent=2,
    )


def check_rules(exprs: dict[str, str]) -> dict[str, str]:
    """Check each expression with `promtool check rules`, as recording rules named by the keys
    (valid metric names). Returns {name: promtool's complaint} for the bad ones; {} when all pass."""
    with tempfile.TemporaryDirectory(prefix="privllm-promtool-") as tmp:
        if _promtool_rules(tmp, exprs)[0] == 0:
            return {}
        # Something is wrong: check each alone to name the bad ones.
        bad = {}
        for name, expr in exprs.items():
            status, output = _promtool_rules(tmp, {name: expr})
            if status != 0:
                bad[name] = f"{expr}\n    {output.strip()}"
        return bad or {"(together)": _promtool_rules(tmp, exprs)[1]}


def _promtool_rules(tmp: str, exprs: dict[str, str]) -> tuple[int, str]:
    path = os.path.join(tmp, "rules.yml")
    rules = [{"record": name, "expr": expr} for name, expr in exprs.items()]
    with open(path, "w") as f:
        json.dump({"groups": [{"name": "check", "rules": rules}]}, f)
    done = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


def sample(metrics_text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample's value from a scrape's text; 0 when there is none yet (an unused label set)."""
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(s.value)
    return 0.0


class Prometheus:
    def __init__(self, targets: list[str]) -> None:
        self.dir = tempfile.mkdtemp(prefix="privllm-prometheus-")
        self.port = free_port()
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        with open(self.config_path, "w") as f:
            f.write(scrape_config(targets))
        self.log_path = os.path.join(self.dir, "prometheus.log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        subprocess.run([PROMTOOL, "check", "config", self.config_path], check=True, capture_output=True, timeout=60)
        argv = [
            PROMETHEUS,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        atexit.register(self.cleanup)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus did not become ready:\n{self.log()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API: the vector's samples, [] when nothing matches."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        assert answer["data"]["resultType"] == "vector", answer
        return list(answer["data"]["result"])

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until `expr` returns at least one sample (a comparison like `x >= 2` filters the
        others out), for at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() >= deadline:
                return result
            time.sleep(0.5)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 15)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
