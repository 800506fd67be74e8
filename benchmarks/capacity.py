"""
How far one router process goes: a synthetic upstream (test equipment) emits deltas at a
fixed rate, the router is pinned to one core and this load generator to the other, and the
number of concurrent streams ramps up. Reports sealed chunks per second, the delay the
router adds between chunks (p50, p99), router CPU and resident memory per open stream; then
pushes past a stream cap to check the router sheds (503) instead of stalling everyone.

    python -m benchmarks.capacity [--levels 10,100,500] [--rate 20] [--deltas 40] [--out capacity.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater, react

from privllm.body import BodyStream
from privllm.client import PrivllmClient, ServerError
from privllm.protocol.keyset import choose_key

from .report import machine, percentile, write_report

# The synthetic upstream shares a core with the load generator and answers health checks
# late under load: the router must not take it out of rotation for that.
PATIENT = {"health_timeout": 30.0, "breaker_failures": 1000}

UNLIMITED: dict[str, dict[str, Any]] = {
    "llama": {"spawn": False},
    "rate_limit": {
        "per_address_rate": 100000.0,
        "per_address_burst": 100000,
        "per_device_rate": 100000.0,
        "per_device_burst": 100000,
    },
    "load": {"max_streams": 100000, "max_streams_per_device": 10000, "max_streams_per_node": 10000},
    "server": {"max_connections_per_address": 100000},
    "pow": {"enabled": False},
    "privacy": {"coalesce_ms": 0},  # measure the router, not the coalescing window
}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS")))


async def counted(client: PrivllmClient, plaintext: dict[str, Any], arrivals: list[float]) -> None:
    """A light load generator: a real sealed request, but the answer's chunks are counted as
    they arrive, not opened, so one Python core can keep up with the router."""
    keys = client._keys if client._keys is not None else await client.fetch_keys()
    sealed = client.seal(plaintext, choose_key(keys, int(time.time())))
    response = await client.post(sealed.body)
    if response.code != 200:
        raise ServerError(str(response.code), response.code)
    pending = [b""]

    def on_data(data: bytes) -> None:
        pending[0] += data
        while b"\n\n" in pending[0]:
            event, pending[0] = pending[0].split(b"\n\n", 1)
            if event.startswith(b"event: chunk"):
                arrivals.append(time.perf_counter())

    body = BodyStream(on_data)
    response.deliverBody(body)
    await body.done


async def level(
    reactor: Any, client: PrivllmClient, pid: int, streams: int, rate: float, ramp: float, raw: bool = False
) -> dict[str, Any]:
    arrivals: list[list[float]] = [[] for _ in range(streams)]
    errors: dict[str, int] = {}
    plaintext = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 64}

    async def one(i: int) -> None:
        await deferLater(reactor, ramp * i / streams)
        try:
            if raw and i:
                await counted(client, plaintext, arrivals[i])
            else:  # the first stream of each level is opened and verified in full
                await client.chat(plaintext, lambda chunk: arrivals[i].append(time.perf_counter()))
        except ServerError as e:
            errors[e.code] = errors.get(e.code, 0) + 1
        except Exception as e:  # network errors under overload are results too
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    rss_before, cpu_before, start = rss_kib(pid), cpu_seconds(pid), time.perf_counter()
    rss_open: list[int] = []

    async def sample() -> None:
        await deferLater(reactor, ramp + 0.5)
        rss_open.append(rss_kib(pid))

    await gatherResults([ensureDeferred(one(i)) for i in range(streams)] + [ensureDeferred(sample())])
    wall = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu_before
    chunks = sum(len(a) for a in arrivals)
    added = [(b - a) * 1000 - 1000 / rate for stream in arrivals for a, b in pairwise(stream[1:-1])]
    return {
        "streams": streams,
        "completed": sum(1 for a in arrivals if a),
        "errors": errors,
        "sealed_chunks_per_second": chunks / wall,
        "added_interchunk_delay_ms_p50": percentile(added, 0.5),
        "added_interchunk_delay_ms_p99": percentile(added, 0.99),
        "router_cpu_percent": 100 * cpu / wall,
        "resident_kib_per_open_stream": (rss_open[0] - rss_before) / streams if rss_open else None,
    }


async def short_chats(
    reactor: Any, client: PrivllmClient, pid: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """New chats per second for one-delta answers: `concurrency` clients, back to back, for `seconds`."""
    plaintext = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 4}
    done = [0]
    errors: dict[str, int] = {}
    cpu_before, start = cpu_seconds(pid), time.perf_counter()

    async def worker() -> None:
        while time.perf_counter() - start < seconds:
            try:
                await client.chat(plaintext)
                done[0] += 1
            except ServerError as e:
                errors[e.code] = errors.get(e.code, 0) + 1
            except Exception as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    await gatherResults([ensureDeferred(worker()) for _ in range(concurrency)])
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "chats_per_second": done[0] / wall,
        "errors": errors,
        "router_cpu_percent": 100 * (cpu_seconds(pid) - cpu_before) / wall,
    }


def start_upstream(socket: str, rate: float, deltas: int, core: str) -> subprocess.Popen[bytes]:
    argv = [
        "taskset",
        "-c",
        core,
        sys.executable,
        "-m",
        "benchmarks.synthetic_upstream",
        socket,
        "--rate",
        str(rate),
        "--deltas",
        str(deltas),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(socket):
            break
        time.sleep(0.05)
    return process


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="10,100,500")
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--deltas", type=int, default=40)
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which each level's streams start")
    p.add_argument("--shed-cap", type=int, default=50, help="stream cap of the shedding check (0: skip)")
    p.add_argument("--short-seconds", type=float, default=5.0, help="the new-chats-per-second phase (0: skip)")
    p.add_argument("--light", action="store_true", help="count sealed chunks without opening them (all but one stream)")
    p.add_argument("--out", default="capacity.json")
    args = p.parse_args()
    from tests.stack import Daemon  # test equipment: the real router under twistd

    cores = "0", "1" if (os.cpu_count() or 1) > 1 else "0"
    os.sched_setaffinity(0, {int(cores[1])})
    workdir = tempfile.mkdtemp(prefix="privllm-capacity-")
    socket = os.path.join(workdir, "upstream.sock")
    upstream = start_upstream(socket, args.rate, args.deltas, cores[1])
    short_socket = os.path.join(workdir, "short.sock")
    short_upstream = start_upstream(short_socket, 1000.0, 1, cores[1])
    sections = {**UNLIMITED, "backend": {"urls": [f"unix://{socket}"], "health_interval": 0.5, **PATIENT}}
    router = Daemon(sections, name="capacity", prefix=["taskset", "-c", cores[0]]).start()
    shed_sections = {**sections, "load": {**UNLIMITED["load"], "max_streams": max(args.shed_cap, 1)}}
    shedder = (
        Daemon(shed_sections, name="shedding", prefix=["taskset", "-c", cores[0]]).start() if args.shed_cap else None
    )
    short_sections = {**sections, "backend": {"urls": [f"unix://{short_socket}"], "health_interval": 0.5, **PATIENT}}
    pin = ["taskset", "-c", cores[0]]
    shorts = Daemon(short_sections, name="short", prefix=pin).start() if args.short_seconds else None
    report: dict[str, Any] = {
        "machine": machine(),
        "rate_per_stream": args.rate,
        "deltas_per_answer": args.deltas,
        "load_generator": "counts sealed chunks" if args.light else "opens every chunk",
        "levels": [],
    }
    try:

        async def go(reactor: Any) -> None:
            assert router.process is not None
            client = PrivllmClient(reactor, router.url, router.pin(), os.urandom(32), router.cert())
            for n in (int(x) for x in args.levels.split(",")):
                report["levels"].append(
                    await level(reactor, client, router.process.pid, n, args.rate, args.ramp, args.light)
                )
            await client.close()
            if shedder is not None and shedder.process is not None:
                shed_client = PrivllmClient(reactor, shedder.url, shedder.pin(), os.urandom(32), shedder.cert())
                report["shedding"] = await level(
                    reactor, shed_client, shedder.process.pid, 2 * args.shed_cap, args.rate, 0.2
                )
                report["shedding"]["cap"] = args.shed_cap
                await shed_client.close()
            if shorts is not None and shorts.process is not None:
                short_client = PrivllmClient(reactor, shorts.url, shorts.pin(), os.urandom(32), shorts.cert())
                short_client._pool.maxPersistentPerHost = 64  # one kept-alive connection per worker, as apps would
                report["short_chats"] = await short_chats(
                    reactor, short_client, shorts.process.pid, 32, args.short_seconds
                )
                await short_client.close()
            write_report(report, args.out)

        react(lambda reactor: ensureDeferred(go(reactor)))
    finally:
        router.cleanup()
        for daemon in (shedder, shorts):
            if daemon is not None:
                daemon.cleanup()
        for process in (upstream, short_upstream):
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
