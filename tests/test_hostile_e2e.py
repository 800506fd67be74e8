"""
Hostile but well-formed chats against the real stack (twistd, llama-server, SmolLM2, TLS):
each is answered with one sealed error, and ordinary chats from other devices still succeed.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import TestCase

from privllm.test.stack import shared

from .docclient import DocClient
from .test_e2e import ROUTER, user

SURROGATE = b'{"messages":[{"role":"user","content":"a\\ud800b"}],"max_tokens":8}'


def metric(text: bytes, name: str, labels: str = "") -> float:
    """One sample's value; a series the router does not export fails the test (a misspelt
    name read as 0 would pass every `== 0`)."""
    match = re.search(rb"^" + re.escape(f"{name}{labels}".encode()) + rb" ([0-9.e+-]+)$", text, re.M)
    if match is None:
        raise AssertionError(f"no series {name}{labels} in the router's metrics")
    return float(match.group(1))


class HostileChats(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.daemon = shared(*ROUTER)

    def doc(self, source: str | None = None) -> DocClient:
        """A new device (a fresh key: anyone can make one), optionally from another loopback address."""
        return DocClient(self.daemon.port, self.daemon.ssl_context(), self.daemon.pin(), source)

    def metrics(self) -> bytes:
        return self.daemon.get("/metrics", tls=False)[2]

    def assert_still_serving(self) -> None:
        self.assertEqual(self.daemon.get("/health/ready")[0], 200)
        for source in ("127.0.0.7", "127.0.0.8"):
            self.assertEqual(self.doc(source).chat(user("Say hi.", 8))[-1]["type"], "done")
        self.assertEqual(metric(self.metrics(), "privllm_active_streams"), 0, "every stream slot was given back")

    def test_lone_surrogates(self) -> None:
        """Each used to leave a stream slot behind and end in a plaintext error page."""
        for _ in range(40):
            chunks = self.doc().chat(SURROGATE)
            self.assertEqual(len(chunks), 1)
            self.assertEqual((chunks[0]["type"], chunks[0]["code"]), ("error", "bad_request"))
        self.assert_still_serving()
        self.assertNotIn("internal error", self.daemon.log())

    def test_overlong_conversations(self) -> None:
        """Refused by the router itself, before llama-server sees them, and never a node failure."""
        long = "word " * 3000  # about 3,000 tokens each: three of them pass a slot's 2,048
        conversation = {
            "messages": [
                {"role": "user", "content": long},
                {"role": "assistant", "content": long},
                {"role": "user", "content": long + "What did I say?"},
            ],
            "max_tokens": 8,
        }
        answers = "privllm_upstream_first_byte_seconds_count"  # responses from the node, any status
        before = metric(self.metrics(), answers, f'{{node="unix://{self.daemon.llama_socket}"}}')
        for _ in range(6):
            chunks = self.doc().chat(conversation)
            self.assertEqual((chunks[-1]["type"], chunks[-1]["code"]), ("error", "too_long"))
        metrics = self.metrics()
        after = metric(metrics, answers, f'{{node="unix://{self.daemon.llama_socket}"}}')
        self.assertEqual(after, before, "never sent: only counted by the node's tokenizer")
        node = f'node="unix://{self.daemon.llama_socket}"'
        opened = f'privllm_breaker_transitions_total{{{node},state="open"}} 0.0'.encode()
        self.assertIn(opened, metrics.splitlines(), "the breaker never opened")
        self.assertNotIn(b"privllm_node_failures_total{", metrics)
        self.assertGreaterEqual(metric(metrics, "privllm_chat_requests_total", '{outcome="too_long"}'), 6)
        self.assert_still_serving()
        served = metric(self.metrics(), answers, f"{{{node}}}")
        self.assertEqual(served, before + 2, "the two chats that were sent are counted: the name is right")
