"""
What keeping the admission state in Redis costs a chat: the same sealed requests admitted
(prepare, screen, HPKE open, commit) and released through the memory state and through a
Redis state on Debian's redis-server over a UNIX socket, one chat at a time, in alternating
rounds so background load hits both alike.

    python -m benchmarks.admission_state [--chats 500] [--rounds 6] [--out admission_state.json]

Reports, per backend, the wall time from `admit` to its answer plus `release` (p50, p90),
the p50 added by Redis, and Redis's commands per chat: script calls, and every command the
scripts ran (INFO commandstats counts both).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from privllm.config.schema import State
from privllm.protocol.admission import Admission
from privllm.state.gate import AdmissionGate
from privllm.state.interface import AdmissionState
from privllm.state.memory import MemoryState
from privllm.state.redis import connect
from privllm.test.helpers import current_key, limits, ring, sealed_request
from privllm.test.redis_server import RedisServer

from .report import machine, percentile, write_report

ROOMY = {
    "address_rate": 1e6,
    "address_burst": 10**6,
    "device_rate": 1e6,
    "device_burst": 10**6,
    "replay_max_entries": 10**7,
    "replay_max_per_address": 10**7,
}


def commands(redis: RedisServer) -> dict[str, int]:
    """Calls per command since the server started, from INFO commandstats."""
    text = redis.command("INFO", "commandstats")
    assert isinstance(text, bytes)
    counts = {}
    for line in text.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line[len("cmdstat_") :].split(":", 1)
            counts[name] = int(dict(f.split("=") for f in fields.split(","))["calls"])
    return counts


async def one_round(gate: AdmissionGate, bodies: list[bytes], address: str) -> list[float]:
    """Admit and release each body in turn; the wall time of each, in milliseconds."""
    took = []
    for body in bodies:
        start = time.perf_counter()
        admitted = await gate.admit(body, address, time.time(), True)
        gate.release(admitted)
        took.append(1000 * (time.perf_counter() - start))
        assert admitted.refusal is None
    return took


async def measure(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    key_ring = ring(int(time.time()))
    key = current_key(key_ring, int(time.time()))
    chat_limits = limits(**ROOMY)
    redis = RedisServer()
    try:
        state_dir = os.path.join(redis.directory, "state")
        os.mkdir(state_dir, 0o700)
        shared = await connect(State(backend="redis", url=redis.url), chat_limits, state_dir, reactor, dev=True)
        backends: dict[str, AdmissionState] = {"memory": MemoryState(chat_limits), "redis": shared}
        gates = {name: AdmissionGate(Admission(key_ring, 65536, 60, 5), s) for name, s in backends.items()}
        # A fresh Redis refuses requests older than its floor for the future skew (5 s): let it pass.
        await (
            gates["redis"]
            .admit(json.dumps(sealed_request(key, timestamp=int(time.time())).body).encode(), "-", time.time(), True)
            .addErrback(lambda _: None)
        )
        await deferLater(reactor, 7, lambda: None)
        times: dict[str, list[float]] = {name: [] for name in gates}
        script_calls = commands_run = 0
        for n in range(args.rounds):
            for name, gate in gates.items() if n % 2 == 0 else reversed(gates.items()):
                now = int(time.time())
                bodies = [json.dumps(sealed_request(key, timestamp=now).body).encode() for _ in range(args.chats)]
                before = commands(redis)
                times[name] += await one_round(gate, bodies, f"192.0.2.{n}")
                if name == "redis":
                    after = commands(redis)
                    diff = {c: after.get(c, 0) - before.get(c, 0) for c in after}
                    script_calls += diff.get("evalsha", 0) + diff.get("eval", 0)
                    commands_run += sum(v for c, v in diff.items() if c != "info")
        await shared.stop()
    finally:
        redis.close()
    chats = args.chats * args.rounds
    p50 = {name: percentile(values, 0.5) for name, values in times.items()}
    return {
        "machine": machine(),
        "chats_per_backend": chats,
        "rounds": args.rounds,
        "ms": {name: {"p50": p50[name], "p90": percentile(values, 0.9)} for name, values in times.items()},
        "redis_added_ms_p50": p50["redis"] - p50["memory"],
        "redis_script_calls_per_chat": script_calls / chats,
        "redis_commands_per_chat": commands_run / chats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chats", type=int, default=500, help="chats per backend per round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", default="admission_state.json")
    args = p.parse_args()

    async def run(reactor: Any) -> None:
        write_report(await measure(reactor, args), args.out)

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
