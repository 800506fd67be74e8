"""
The timings the router's histograms record, measured raw on the real dev stack, so their
buckets are chosen from figures (privllm.web.metrics, docs/operations.md "Buckets"):

    python -m benchmarks.timings [--chats 24] [--concurrency 1,4] [--max-tokens 128] [--out timings.json]

Chats go through privllm (HPKE-sealed, padding and coalescing as configured by default)
from `privllm.client`, `concurrency` at a time against one llama-server slot, so the higher
levels queue as a busy node does. Measured at the client over loopback (within a millisecond
of what the router sees): time to first token, gaps between sealed chunks, whole-answer time
and tokens per second of each answer; and, straight to llama-server on its socket, the time
from sending a request to its response headers (the router-to-node first byte). For each,
the report gives percentiles and how the samples spread over the router's buckets.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import time
from itertools import pairwise
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import react
from twisted.web.client import ResponseNeverReceived

from privllm.body import BodyStream
from privllm.client import PrivllmClient
from privllm.config import Config
from privllm.protocol.chat import parse_chat_request
from privllm.test.stack import Daemon  # test equipment, shared with tests/
from privllm.upstream.llama import LlamaServer
from privllm.upstream.openai_stream import completion_body
from privllm.web import metrics

from .report import machine, percentile, write_report

PROMPT = "Who were the US presidents in the 1990s? Answer in detail."
BUCKETS = {
    "time_to_first_token_seconds": metrics.FIRST_TOKEN_BUCKETS,
    "inter_chunk_seconds": metrics.GAP_BUCKETS,
    "answer_seconds": metrics.ANSWER_BUCKETS,
    "tokens_per_second": metrics.TOKEN_RATE_BUCKETS,
    "upstream_first_byte_seconds": metrics.FIRST_BYTE_BUCKETS,
}


def plaintext(max_tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0.7}


async def chat(client: PrivllmClient, body: dict[str, Any], samples: dict[str, list[float]]) -> None:
    start = time.perf_counter()
    chunks: list[float] = []
    ended: dict[str, float] = {}

    def on_chunk(chunk: dict[str, Any]) -> None:
        now = time.perf_counter()
        if chunk["type"] == "delta":
            chunks.append(now)
        elif chunk["type"] == "done":
            ended["at"], ended["tokens"] = now, chunk["usage"]["completion_tokens"]

    await client.chat(body, on_chunk)
    samples["time_to_first_token_seconds"].append(chunks[0] - start)
    samples["inter_chunk_seconds"] += [b - a for a, b in pairwise(chunks)]
    samples["answer_seconds"].append(ended["at"] - start)
    if ended["tokens"] >= 2 and ended["at"] > chunks[0]:
        samples["tokens_per_second"].append((ended["tokens"] - 1) / (ended["at"] - chunks[0]))


async def first_byte(llama: LlamaServer, body: dict[str, Any], samples: dict[str, list[float]]) -> None:
    upstream = completion_body(parse_chat_request(json.dumps(body).encode(), Config().chat_limits()))
    for attempt in range(2):  # as the router does: again, once, when a kept-alive connection was just closed
        start = time.perf_counter()
        try:
            response = await llama.post_stream("/v1/chat/completions", upstream)
            break
        except ResponseNeverReceived:
            if attempt:
                raise
    samples["upstream_first_byte_seconds"].append(time.perf_counter() - start)
    stream = BodyStream(lambda data: None)  # only the headers' time counts; the body is read to its end
    response.deliverBody(stream)
    await stream.done


def describe(name: str, values: list[float]) -> dict[str, Any]:
    buckets = BUCKETS[name]
    counts = [0] * (len(buckets) + 1)
    for v in values:
        counts[bisect.bisect_left(buckets, v)] += 1
    return {
        "samples": len(values),
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
        "max": max(values),
        "buckets": {**{f"le {b}": c for b, c in zip(buckets, counts, strict=False)}, "+Inf": counts[-1]},
    }


async def run(reactor: Any, daemon: Any, chats: int, levels: list[int], max_tokens: int) -> dict[str, Any]:
    client = PrivllmClient(reactor, daemon.url, daemon.pin(), os.urandom(32), daemon.cert())
    llama = LlamaServer(reactor, f"unix://{daemon.llama_socket}", 5)
    body = plaintext(max_tokens)
    report: dict[str, Any] = {"machine": machine(), "chats": chats, "max_tokens": max_tokens, "levels": {}}
    warm: dict[str, list[float]] = {name: [] for name in BUCKETS}
    await chat(client, body, warm)
    for level in levels:
        samples: dict[str, list[float]] = {name: [] for name in BUCKETS}
        for _ in range(chats // level):
            await gatherResults([ensureDeferred(chat(client, body, samples)) for _ in range(level)])
        for _ in range(min(chats, 8)):
            await first_byte(llama, body, samples)
        report["levels"][str(level)] = {name: describe(name, v) for name, v in samples.items() if v}
    await llama.close()
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chats", type=int, default=24)
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", default="timings.json")
    args = p.parse_args()
    daemon = Daemon({"llama": {"parallel": 1}}, name="timings").start()
    try:
        levels = [int(n) for n in args.concurrency.split(",")]
        react(lambda reactor: ensureDeferred(_go(reactor, daemon, args, levels)))
    finally:
        daemon.cleanup()


async def _go(reactor: Any, daemon: Any, args: argparse.Namespace, levels: list[int]) -> None:
    write_report(await run(reactor, daemon, args.chats, levels, args.max_tokens), args.out)


if __name__ == "__main__":
    main()
