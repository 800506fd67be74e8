"""
Classic load scenarios against one router and the synthetic upstream (test equipment):
ramp-up, sustained, spike and stress. Each is bounded in time and count, loopback only,
and stops by itself. Reports time to first chunk and whole-answer latency (p50, p95, p99),
tokens per second delivered, and errors by code.

    python -m benchmarks.scenarios [--only spike,stress] [--scale 0.1] [--out scenarios.json]

--scale multiplies the number of chats in every step (at least one each), for a short run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater, react

from privllm.client import PrivllmClient, ServerError
from privllm.test.stack import Daemon  # test equipment, shared with tests/

from .capacity import UNLIMITED, start_upstream
from .report import machine, percentile, write_report

# (name, [(start second, number of chats started then)]): every chat is one answer.
SCENARIOS: list[tuple[str, list[tuple[float, int]]]] = [
    ("ramp-up", [(i * 0.5, 2 + 2 * i) for i in range(10)]),  # 2, 4, ... 20 new chats each half second
    ("sustained", [(i * 0.5, 10) for i in range(20)]),  # 20 chats/s for 10 s
    ("spike", [(i * 0.5, 3) for i in range(4)] + [(2.0, 150)] + [(2.5 + i * 0.5, 3) for i in range(4)]),
    ("stress", [(i * 0.5, 25 * (i + 1)) for i in range(8)]),  # 25, 50, ... 200 at once, past any sane load
]


async def scenario(reactor: Any, client: PrivllmClient, plan: list[tuple[float, int]]) -> dict[str, Any]:
    first: list[float] = []
    whole: list[float] = []
    tokens = [0]
    errors: dict[str, int] = {}
    plaintext = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 64}

    async def chat(delay: float) -> None:
        await deferLater(reactor, delay)
        start = time.perf_counter()
        seen: list[float] = []

        def on_chunk(chunk: dict[str, Any]) -> None:
            if not seen:
                seen.append(time.perf_counter() - start)

        try:
            result = await client.chat(plaintext, on_chunk)
            first.extend(seen)
            whole.append(time.perf_counter() - start)
            tokens[0] += int(result.usage.get("completion_tokens", 0))
        except ServerError as e:
            errors[e.code] = errors.get(e.code, 0) + 1
        except Exception as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    begin = time.perf_counter()
    await gatherResults([ensureDeferred(chat(at)) for at, count in plan for _ in range(count)])
    wall = time.perf_counter() - begin
    ms = [1000 * x for x in first]
    total_ms = [1000 * x for x in whole]
    return {
        "chats": sum(count for _, count in plan),
        "completed": len(whole),
        "errors": errors,
        "first_chunk_ms": {q: percentile(ms, v) for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "answer_ms": {q: percentile(total_ms, v) for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "tokens_per_second": tokens[0] / wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="scenarios.json")
    p.add_argument("--max-streams", type=int, default=300, help="the router's stream cap (stress pushes past it)")
    p.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the chats of every step")
    args = p.parse_args()
    os.sched_setaffinity(0, {1})
    workdir = tempfile.mkdtemp(prefix="privllm-scenarios-")
    socket = os.path.join(workdir, "upstream.sock")
    upstream = start_upstream(socket, 20.0, 40, "1")
    sections = {
        **UNLIMITED,
        "backend": {"urls": [f"unix://{socket}"], "health_interval": 0.5},
        "load": {**UNLIMITED["load"], "max_streams": args.max_streams},
        "privacy": {},  # the defaults: padding and coalescing on, as in production
    }
    router = Daemon(sections, name="scenarios", prefix=["taskset", "-c", "0"]).start()
    report: dict[str, Any] = {"machine": machine(), "upstream": "20 deltas/s, 40 per answer", "scenarios": {}}
    try:

        async def go(reactor: Any) -> None:
            client = PrivllmClient(reactor, router.url, router.pin(), os.urandom(32), router.cert())
            client._pool.maxPersistentPerHost = 64
            for name, plan in SCENARIOS:
                if args.only and name not in args.only.split(","):
                    continue
                scaled = [(at, max(1, round(count * args.scale))) for at, count in plan]
                report["scenarios"][name] = await scenario(reactor, client, scaled)
                await deferLater(reactor, 2.0)  # let the router settle between scenarios
            await client.close()
            write_report(report, args.out)

        react(lambda reactor: ensureDeferred(go(reactor)))
    finally:
        router.cleanup()
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
