"""
A real Prometheus (Debian's) scrapes the real router's metrics listener as job privllm, the way
docs/monitoring/README.md says to, and the series the dashboard and the alerts rest on arrive.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from privllm.test.stack import shared

from .docclient import DocClient
from .prometheus import JOB, LLAMA_JOB, Prometheus, sample
from .test_e2e import ROUTER, user

CHATS = 2


class Scraped(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.daemon = shared(*ROUTER)  # other tests' chats may have been counted already
        self.prometheus = Prometheus([f"127.0.0.1:{self.daemon.metrics_port}"])
        self.addCleanup(self.prometheus.cleanup)  # stops it and removes its database, on every path
        self.prometheus.start()

    def counted(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The router's own count now, read from its listener, not through Prometheus."""
        status, _, body = self.daemon.get("/metrics", tls=False)
        self.assertEqual(status, 200)
        return sample(body.decode(), name, labels)

    def seen(self, expr: str) -> list[dict]:
        result = self.prometheus.wait_for(expr, timeout=30)
        self.assertTrue(result, f"{expr}: nothing after 30 s\n{self.prometheus.log()[-3000:]}")
        return result

    def test_the_key_series_arrive(self) -> None:
        first_tokens = self.counted("privllm_time_to_first_token_seconds_count")
        ok = self.counted("privllm_chat_requests_total", {"outcome": "ok"})
        client = DocClient(self.daemon.port, self.daemon.ssl_context(), self.daemon.pin())
        for _ in range(CHATS):
            self.assertEqual(client.chat(user("hi"))[-1]["type"], "done")
        up = self.seen(f'up{{job="{JOB}"}} == 1')
        self.assertEqual(up[0]["metric"]["instance"], f"127.0.0.1:{self.daemon.metrics_port}")
        self.seen(f'privllm_active_streams{{job="{JOB}"}}')
        self.seen(f'privllm_time_to_first_token_seconds_count{{job="{JOB}"}} >= {first_tokens + CHATS:g}')
        self.seen(f'privllm_chat_requests_total{{job="{JOB}", outcome="ok"}} >= {ok + CHATS:g}')
        self.seen(f'llamacpp:prompt_tokens_total{{job="{LLAMA_JOB}"}} > 0')  # llama-server's own, passed through
