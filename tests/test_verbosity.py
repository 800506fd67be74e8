"""Verbosity on the real SmolLM2: over the same 10 questions, brief < normal < detailed in
median tokens, and brief answers hold no markdown table. The figures are printed (CI keeps
them in its log) and written to $PRIVLLM_VERBOSITY_OUT when set."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from benchmarks.verbosity import measure
from privllm.client import PrivllmClient
from privllm.test.stack import shared

from .test_e2e import ROUTER


class Verbosity(TestCase):
    timeout = 900

    async def test_brief_normal_detailed(self) -> None:
        router = shared(*ROUTER)
        client = PrivllmClient(reactor, router.url, router.pin(), os.urandom(32), router.cert())
        self.addCleanup(client.close)
        report = await measure(client)
        print(
            "\nverbosity medians (tokens):",
            {level: report[level]["median_tokens"] for level in ("brief", "normal", "detailed")},
        )
        if os.environ.get("PRIVLLM_VERBOSITY_OUT"):
            with open(os.environ["PRIVLLM_VERBOSITY_OUT"], "w") as f:
                json.dump(report, f, indent=2)
        self.assertLess(report["brief"]["median_tokens"], report["normal"]["median_tokens"])
        self.assertLess(report["normal"]["median_tokens"], report["detailed"]["median_tokens"])
        self.assertEqual(report["brief"]["answers_with_tables"], 0)
