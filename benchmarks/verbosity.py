"""
Verbosity against the real model: the same questions asked brief, normal and detailed,
through a running router; reports each level's median answer length in tokens and how
many answers hold a markdown table.

    python -m benchmarks.verbosity --url https://127.0.0.1:8443 --state-dir ~/.local/state/privllm
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from typing import Any

from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults
from twisted.internet.task import react

from privllm.client import PrivllmClient
from privllm.keys.material import IDENTITY_PUB, TLS_CERT
from privllm.protocol.chat import VERBOSITY
from privllm.protocol.encoding import b64decode

QUESTIONS = [
    "Who were the US presidents in the 1990s?",
    "Why is the sky blue?",
    "How do I boil an egg?",
    "What is photosynthesis?",
    "What causes the seasons on Earth?",
    "How does a bicycle stay upright?",
    "What is the capital of Australia, and why not Sydney?",
    "How do vaccines work?",
    "What is the difference between weather and climate?",
    "How should I prepare for a job interview?",
]
TABLE = re.compile(r"^\s*\|.*\|\s*$", re.M)


async def measure(client: PrivllmClient, parallel: int = 4) -> dict[str, Any]:
    gate = DeferredSemaphore(parallel)

    async def ask(question: str, level: str) -> tuple[str, int, bool]:
        body = {"messages": [{"role": "user", "content": question}], "verbosity": level, "temperature": 0}
        result = await client.chat(body)
        return level, int(result.usage.get("completion_tokens", 0)), bool(TABLE.search(result.text))

    jobs = [gate.run(ask, q, v) for q in QUESTIONS for v in VERBOSITY]
    answers = await gatherResults(jobs)
    report: dict[str, Any] = {"questions": len(QUESTIONS)}
    for level in VERBOSITY:
        lengths = [n for v, n, _ in answers if v == level]
        report[level] = {
            "median_tokens": statistics.median(lengths),
            "lengths": lengths,
            "answers_with_tables": sum(t for v, _, t in answers if v == level),
        }
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="https://127.0.0.1:8443")
    p.add_argument("--state-dir", default=os.path.expanduser("~/.local/state/privllm"))
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args()

    async def run(reactor: Any) -> None:
        with open(os.path.join(args.state_dir, IDENTITY_PUB)) as f:
            pin = b64decode(f.read().strip(), 32)
        with open(os.path.join(args.state_dir, TLS_CERT), "rb") as f:
            cert = f.read()
        report = await measure(PrivllmClient(reactor, args.url, pin, os.urandom(32), cert))
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")

    react(lambda reactor: ensureDeferred(run(reactor)))
    sys.exit(0)


if __name__ == "__main__":
    main()
