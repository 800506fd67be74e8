"""
How far one router process goes: a synthetic upstream (test equipment) emits deltas at a
fixed rate, the router is pinned to one core and this load generator to the other, and the
number of concurrent streams ramps up. Reports sealed chunks per second, the delay the
router adds between chunks (p50, p99), router CPU and resident memory per open stream; then
pushes past a stream cap to check the router sheds (503) instead of stalling everyone.

    python -m benchmarks.capacity [--levels 10,100,500,1000,2000] [--rate 20] [--deltas 200] [--light] [--out capacity.json]

With --light, all streams of a level but the first go through benchmarks.loadgen (one TLS
connection each, sealed chunks timestamped, not opened), cheap enough for 1,000 streams.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, NamedTuple

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThread

from privllm.client import PrivllmClient, ServerError
from privllm.protocol.keyset import choose_key
from privllm.test.stack import Daemon  # test equipment, shared with tests/

from . import loadgen
from .report import machine, percentile, write_report

# The synthetic upstream shares a core with the load generator and may answer health checks
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
    "load": {
        "max_streams": 100000,
        "max_streams_per_device": 10000,
        "max_streams_per_node": 10000,
        "max_streams_per_address": 100000,
    },
    "server": {"max_connections_per_address": 100000},
    "replay": {"max_entries_per_address": 200000},  # every stream comes from 127.0.0.1
    "pow": {"enabled": False},
    "privacy": {"coalesce_ms": 0},  # measure the router, not the coalescing window
}

# New streams per second while a level ramps up: at 1,000 streams in one second the TLS
# handshakes alone would hold both cores for most of that second.
RAMP_RATE = 400.0
LIGHT_DEADLINE = 60.0  # seconds after the ramp: the light load generator abandons streams still open


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def tree(pid: int) -> list[int]:
    """The process and its live descendants: a router with workers is a parent and its workers."""
    return [pid] + [p for child in children(pid) for p in tree(child)]


def cpu_seconds(pid: int, descendants: bool = False) -> float:
    """CPU of the process, and with `descendants` of every process below it, live (read) or
    ended (cutime, cstime): a router with workers is a parent and its workers."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = sum(int(x) for x in fields[11 : 15 if descendants else 13]) / os.sysconf("SC_CLK_TCK")
    return own + (sum(cpu_seconds(child, True) for child in children(pid)) if descendants else 0.0)


def rss_kib(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with open(f"/proc/{p}/status") as f:
            total += int(next(line.split()[1] for line in f if line.startswith("VmRSS")))
    return total


class Router(NamedTuple):
    """Where the light load generator connects: the router's address and its self-signed certificate."""

    host: str
    port: int
    cert: bytes


async def sealed_bodies(client: PrivllmClient, plaintext: dict[str, Any], count: int) -> list[bytes]:
    """One freshly sealed request per stream (the router's replay window refuses a repeat),
    sealed before the clock starts so that sealing does not load the load generator."""
    keys = await client.current_keys()
    key = choose_key(keys, int(time.time()))
    return [json.dumps(client.seal(plaintext, key).body).encode() for _ in range(count)]


def equipment_cost(result: loadgen.LoadResult) -> dict[str, float]:
    """The light load generator's own CPU per chunk taken in (TLS handshakes apart) and per
    handshake: both must stay far below the router's, or the level measures the equipment."""
    chunks, streams = sum(len(a) for a in result.arrivals), len(result.arrivals)
    return {
        "us_per_chunk": 1e6 * (result.cpu_seconds - result.handshake_seconds) / max(1, chunks),
        "ms_per_handshake": 1e3 * result.handshake_seconds / max(1, streams),
    }


async def level(
    reactor: Any,
    client: PrivllmClient,
    pid: int,
    streams: int,
    rate: float,
    ramp: float,
    light: Router | None = None,
    equipment: Sequence[int] = (),
) -> dict[str, Any]:
    """One level of `streams` concurrent chats started over `ramp` seconds. With `light`, all but the
    first go through benchmarks.loadgen; `equipment` are the test equipment's pids (CPU shown)."""
    arrivals: list[list[float]] = [[] for _ in range(streams)]
    errors: dict[str, int] = {}
    plaintext = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 64}
    bodies = await sealed_bodies(client, plaintext, streams - 1) if light else []

    async def one(i: int) -> None:
        await deferLater(reactor, ramp * i / streams)
        try:
            await client.chat(plaintext, lambda chunk: arrivals[i].append(time.perf_counter()))
        except ServerError as e:
            errors[e.code] = errors.get(e.code, 0) + 1
        except Exception as e:  # network errors under overload are results too
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    rss_before, cpu_before, start = rss_kib(pid), cpu_seconds(pid, True), time.perf_counter()
    equipment_before = sum(cpu_seconds(p) for p in equipment)
    rss_open: list[int] = []

    async def sample() -> None:
        await deferLater(reactor, ramp + 0.5)
        rss_open.append(rss_kib(pid))

    counted = None
    if light is not None:  # the first stream of each level is still opened and verified in full
        starts = [ramp * i / streams for i in range(1, streams)]
        counted = deferToThread(loadgen.run, *light, bodies, starts, ramp + LIGHT_DEADLINE)
    verified = range(1 if light else streams)
    await gatherResults([ensureDeferred(one(i)) for i in verified] + [ensureDeferred(sample())])
    result = await counted if counted is not None else None
    if result is not None:
        arrivals[1:] = result.arrivals
        for kind, n in result.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    wall = time.perf_counter() - start
    cpu = cpu_seconds(pid, True) - cpu_before
    chunks = sum(len(a) for a in arrivals)
    equipment_cpu = sum(cpu_seconds(p) for p in equipment) - equipment_before
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
        "test_equipment_cpu_percent": 100 * equipment_cpu / wall if equipment else None,
        "load_generator_cpu": equipment_cost(result) if result is not None else None,
    }


async def short_chats(
    reactor: Any, client: PrivllmClient, pid: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """New chats per second for one-delta answers: `concurrency` clients, back to back, for `seconds`."""
    plaintext = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 4}
    done = [0]
    errors: dict[str, int] = {}
    cpu_before, start = cpu_seconds(pid, True), time.perf_counter()

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
        "router_cpu_percent": 100 * (cpu_seconds(pid, True) - cpu_before) / wall,
    }


async def light_short_chats(
    client: PrivllmClient,
    pid: int,
    light: Router,
    seconds: float,
    equipment: Sequence[int] = (),
    sessions: int = 64,
    target: float = 1200.0,
    cap: int = 6000,
) -> dict[str, Any]:
    """New chats per second for one-delta answers through benchmarks.loadgen: `sessions` kept-alive
    connections (as apps keep theirs), each posting its pre-sealed chats back to back, for `seconds`
    or until the bodies run out. Bodies are sealed before the clock starts (about 0.5 ms each), enough
    for `target` chats/s up to `cap`. The router's and the load generator's CPU per chat say which
    side was the limit; chats cut off at the end of the phase are not errors."""
    plaintext = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 4}
    per_session = max(1, min(int(-(-seconds * target // sessions)), cap // sessions))  # ceil, capped
    flat = await sealed_bodies(client, plaintext, sessions * per_session)
    bodies = [flat[i * per_session : (i + 1) * per_session] for i in range(sessions)]
    cpu_before, start = cpu_seconds(pid, True), time.perf_counter()
    equipment_before = sum(cpu_seconds(p) for p in equipment)
    result = await deferToThread(loadgen.sessions, *light, bodies, seconds)
    wall = time.perf_counter() - start
    cpu = cpu_seconds(pid, True) - cpu_before
    equipment_cpu = sum(cpu_seconds(p) for p in equipment) - equipment_before
    done = max(1, result.completed)
    return {
        "concurrency": sessions,
        "bodies": len(flat),
        "completed": result.completed,
        "chats_per_second": result.completed / wall,
        "errors": {kind: n for kind, n in result.errors.items() if kind != "deadline"},
        "cut_off_at_end": result.errors.get("deadline", 0),
        "connections": result.connections,
        "router_cpu_percent": 100 * cpu / wall,
        "router_cpu_ms_per_chat": 1e3 * cpu / done,
        "load_generator_cpu_ms_per_chat": 1e3 * (result.cpu_seconds - result.handshake_seconds) / done,
        "load_generator_handshake_ms": 1e3 * result.handshake_seconds,
        "test_equipment_cpu_percent": 100 * equipment_cpu / wall if equipment else None,
    }


def start_upstream(socket: str, rate: float, deltas: int, core: str) -> subprocess.Popen[bytes]:
    argv = [
        "taskset",
        "-c",
        core,
        sys.executable,
        "-m",
        "privllm.test.synthetic_upstream",
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


def ramp_arguments(p: argparse.ArgumentParser) -> None:
    """The load of a ramp, the same for privllm and for nginx (benchmarks.plain_proxy)."""
    p.add_argument("--levels", default="10,100,500,1000,2000")
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument(
        "--deltas",
        type=int,
        default=200,
        help="deltas per answer: at 20/s, 10 s, so a level's streams are all open at once",
    )
    p.add_argument(
        "--ramp",
        type=float,
        default=1.0,
        help=f"seconds over which a level's streams start (at least streams/{RAMP_RATE})",
    )


def ramp_levels(args: argparse.Namespace) -> list[tuple[int, float]]:
    """(streams, seconds over which they start) for each level of the ramp."""
    return [(n, max(args.ramp, n / RAMP_RATE)) for n in (int(x) for x in args.levels.split(","))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ramp_arguments(p)
    p.add_argument("--shed-cap", type=int, default=256, help="stream cap of the shedding check (0: skip)")
    p.add_argument("--shed-streams", type=int, default=0, help="streams offered to it (default: twice the cap)")
    p.add_argument("--short-seconds", type=float, default=5.0, help="the new-chats-per-second phase (0: skip)")
    p.add_argument("--light", action="store_true", help="count sealed chunks without opening them (all but one stream)")
    p.add_argument("--workers", type=int, default=1, help="router processes (server.workers); 2 or more: every core")
    p.add_argument("--state", choices=("memory", "redis"), default="memory", help="where admission state lives")
    p.add_argument("--short-target", type=float, default=1200.0, help="short chats per second the bodies suffice for")
    p.add_argument("--out", default="capacity.json")
    args = p.parse_args()
    cores = "0", "1" if (os.cpu_count() or 1) > 1 else "0"
    os.sched_setaffinity(0, {int(cores[1])})
    # One router process has core 0; workers have every core, the test equipment's included.
    router_cores = cores[0] if args.workers == 1 else ",".join(str(c) for c in range(os.cpu_count() or 1))
    pin = ["taskset", "-c", router_cores]
    redis_servers: list[Any] = []

    def state(base: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The daemon's sections with its own Redis when the state is shared (routers on one
        Redis must share one hashing key; these are separate routers)."""
        extra: dict[str, dict[str, Any]] = {"server": {**base.get("server", {}), "workers": args.workers}}
        if args.state == "redis":
            from privllm.test.redis_server import RedisServer

            redis_servers.append(RedisServer())
            extra["state"] = {"backend": "redis", "url": redis_servers[-1].url}
            extra["replay"] = {**base.get("replay", {}), "future_skew": 1}  # a fresh Redis's floor: 2 s
        return {**base, **extra}

    workdir = tempfile.mkdtemp(prefix="privllm-capacity-")
    socket = os.path.join(workdir, "upstream.sock")
    upstream = start_upstream(socket, args.rate, args.deltas, cores[1])
    short_socket = os.path.join(workdir, "short.sock")
    short_upstream = start_upstream(short_socket, 1000.0, 1, cores[1])
    sections = {**UNLIMITED, "backend": {"urls": [f"unix://{socket}"], "health_interval": 0.5, **PATIENT}}
    router = Daemon(state(sections), name="capacity", prefix=pin).start()
    shed_sections = {**sections, "load": {**UNLIMITED["load"], "max_streams": max(args.shed_cap, 1)}}
    shedder = Daemon(state(shed_sections), name="shedding", prefix=pin).start() if args.shed_cap else None
    short_sections = {**sections, "backend": {"urls": [f"unix://{short_socket}"], "health_interval": 0.5, **PATIENT}}
    shorts = Daemon(state(short_sections), name="short", prefix=pin).start() if args.short_seconds else None
    time.sleep(2.5 if args.state == "redis" else 0)  # past a fresh Redis's floor
    report: dict[str, Any] = {
        "machine": machine(),
        "workers": args.workers,
        "state": args.state,
        "router_cores": router_cores,
        "rate_per_stream": args.rate,
        "deltas_per_answer": args.deltas,
        "load_generator": "counts sealed chunks (benchmarks.loadgen)" if args.light else "opens every chunk",
        "levels": [],
    }
    try:

        async def go(reactor: Any) -> None:
            assert router.process is not None
            client = PrivllmClient(reactor, router.url, router.pin(), os.urandom(32), router.cert())
            light = Router("127.0.0.1", router.port, router.cert()) if args.light else None
            equipment = [upstream.pid, os.getpid()]  # core 1: the synthetic upstream and this process
            for n, ramp in ramp_levels(args):
                report["levels"].append(
                    await level(reactor, client, router.process.pid, n, args.rate, ramp, light, equipment)
                )
            await client.close()
            if shedder is not None and shedder.process is not None:
                shed_client = PrivllmClient(reactor, shedder.url, shedder.pin(), os.urandom(32), shedder.cert())
                offered = args.shed_streams or 2 * args.shed_cap
                shed_light = Router("127.0.0.1", shedder.port, shedder.cert()) if args.light else None
                report["shedding"] = await level(
                    reactor,
                    shed_client,
                    shedder.process.pid,
                    offered,
                    args.rate,
                    offered / RAMP_RATE,
                    shed_light,
                    equipment,
                )
                report["shedding"]["cap"] = args.shed_cap
                await shed_client.close()
            if shorts is not None and shorts.process is not None:
                short_client = PrivllmClient(reactor, shorts.url, shorts.pin(), os.urandom(32), shorts.cert())
                if args.light:  # core 1: the one-delta upstream and this process (the load generator)
                    short_light = Router("127.0.0.1", shorts.port, shorts.cert())
                    short_equipment = [short_upstream.pid, os.getpid()]
                    report["short_chats"] = await light_short_chats(
                        short_client,
                        shorts.process.pid,
                        short_light,
                        args.short_seconds,
                        short_equipment,
                        target=args.short_target,
                        cap=int(5 * args.short_target),
                    )
                else:
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
        for redis in redis_servers:
            redis.close()


if __name__ == "__main__":
    main()
