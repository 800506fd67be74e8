"""
What privacy costs on the real stack: the same chats, with the same prompts and settings,
sent straight to llama-server (plain streaming chat completions on its socket) and through
privllm (HPKE-sealed, decrypted by the client), interleaved A B A B so machine drift cancels.

Reports time to first token and decode tokens per second, median and p95, and their ratios.

    python -m benchmarks.overhead [--pairs 8] [--max-tokens 128] [--out overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from privllm.body import BodyStream
from privllm.client import PrivllmClient
from privllm.config import Config
from privllm.protocol.chat import parse_chat_request
from privllm.protocol.life import Finished
from privllm.test.stack import Daemon  # test equipment, shared with tests/
from privllm.upstream.events import Delta
from privllm.upstream.llama import LlamaServer
from privllm.upstream.openai_stream import ChatCompletionStream, completion_body

from .report import machine, percentile, write_report

PROMPT = "Who were the US presidents in the 1990s? Answer in detail."


def summary(samples: list[dict[str, float]]) -> dict[str, float]:
    ttft = [s["ttft"] for s in samples]
    tps = [s["tokens_per_second"] for s in samples]
    return {
        "ttft_median_ms": statistics.median(ttft) * 1000,
        "ttft_p95_ms": percentile(ttft, 0.95) * 1000,
        "tokens_per_second_median": statistics.median(tps),
        "tokens_per_second_p95": percentile(tps, 0.95),
    }


def request(max_tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0}


async def direct(llama: LlamaServer, plaintext: dict[str, Any]) -> dict[str, float]:
    """The same upstream body privllm would send, straight to llama-server."""
    body = completion_body(parse_chat_request(json.dumps(plaintext).encode(), Config().chat_limits()))
    start = time.perf_counter()
    marks: dict[str, float] = {}
    translator = ChatCompletionStream()

    def on_data(data: bytes) -> None:
        for event in translator.feed(data):
            now = time.perf_counter()
            if isinstance(event, Delta):
                marks.setdefault("first", now)
            elif isinstance(event, Finished):
                marks["done"], marks["tokens"] = now, event.completion_tokens

    response = await llama.post_stream("/v1/chat/completions", body)
    stream = BodyStream(on_data)
    response.deliverBody(stream)
    await stream.done
    return _sample(start, marks)


async def private(client: PrivllmClient, plaintext: dict[str, Any]) -> dict[str, float]:
    start = time.perf_counter()
    marks: dict[str, float] = {}

    def on_chunk(chunk: dict[str, Any]) -> None:
        now = time.perf_counter()
        if chunk["type"] == "delta":
            marks.setdefault("first", now)
        elif chunk["type"] == "done":
            marks["done"], marks["tokens"] = now, chunk["usage"]["completion_tokens"]

    await client.chat(plaintext, on_chunk)
    return _sample(start, marks)


def _sample(start: float, marks: dict[str, float]) -> dict[str, float]:
    decode = max(marks["done"] - marks["first"], 1e-9)
    return {
        "ttft": marks["first"] - start,
        "tokens_per_second": (marks["tokens"] - 1) / decode,
        "tokens": marks["tokens"],
    }


async def run(
    reactor: Any, url: str, socket: str, pin: bytes, cert: bytes, pairs: int, max_tokens: int
) -> dict[str, Any]:
    llama = LlamaServer(reactor, f"unix://{socket}", 5)
    client = PrivllmClient(reactor, url, pin, os.urandom(32), cert)
    plaintext = request(max_tokens)
    await direct(llama, plaintext)  # warm both paths (prompt cache, connections)
    await private(client, plaintext)
    a: list[dict[str, float]] = []
    b: list[dict[str, float]] = []
    for _ in range(pairs):
        a.append(await direct(llama, plaintext))
        b.append(await private(client, plaintext))
    await llama.close()
    direct_s, private_s = summary(a), summary(b)
    return {
        "machine": machine(),
        "pairs": pairs,
        "max_tokens": max_tokens,
        "llama_server": direct_s,
        "privllm": private_s,
        "tokens_per_second_ratio": private_s["tokens_per_second_median"] / direct_s["tokens_per_second_median"],
        "ttft_added_ms_median": private_s["ttft_median_ms"] - direct_s["ttft_median_ms"],
        # The same question asked pair by pair: less swayed by llama-server's own jitter.
        "ttft_added_ms_median_of_pairs": 1000
        * statistics.median(y["ttft"] - x["ttft"] for x, y in zip(a, b, strict=True)),
        "targets": {"tokens_per_second_ratio_min": 0.97, "ttft_added_ms_median_max": 5.0},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", default="overhead.json")
    args = p.parse_args()
    daemon = Daemon({"llama": {"parallel": 1}}, name="bench").start()
    try:

        async def go(reactor: Any) -> None:
            report = await run(
                reactor, daemon.url, daemon.llama_socket, daemon.pin(), daemon.cert(), args.pairs, args.max_tokens
            )
            write_report(report, args.out)

        react(lambda reactor: ensureDeferred(go(reactor)))
    finally:
        daemon.cleanup()


if __name__ == "__main__":
    main()
