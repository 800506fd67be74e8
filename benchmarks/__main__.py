"""
The whole benchmark suite in one command, bounded in time and loopback only:

    python -m benchmarks [--out-dir benchmark-results] [--levels 10,100,500,1000,2000]

(or `scripts/bench`, which installs what it needs first). It runs the overhead comparison
on the real llama-server, the capacity ramp of one router core (with the light load
generator), shedding past the default stream cap, new short chats per second, the same
ramp through nginx, and the load scenarios. Every figure goes to results.json with the
machine's description, and capacity.png plots throughput and added delay against
concurrent streams. docs/performance.md explains the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

SHED_CAP = "256"  # the default load.max_streams
SHED_STREAMS = "2000"


def run(module: str, out: str, *extra: str) -> Any:
    subprocess.run([sys.executable, "-m", module, "--out", out, *extra], check=True, timeout=1800)
    with open(out) as f:
        return json.load(f)


def plot(capacity: dict[str, Any], plain: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours, theirs = capacity["levels"], plain["levels"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"privllm": "tab:blue", "nginx": "tab:orange"}
    ours_y = [x["sealed_chunks_per_second"] for x in ours]
    left.plot([x["streams"] for x in ours], ours_y, marker="o", color=colors["privllm"], label="privllm")
    theirs_y = [x["events_per_second"] for x in theirs]
    left.plot([x["streams"] for x in theirs], theirs_y, marker="s", color=colors["nginx"], label="nginx")
    offered = [x["streams"] * capacity["rate_per_stream"] for x in ours]
    left.plot([x["streams"] for x in ours], offered, linestyle=":", color="grey", label="offered")
    left.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="chunks / s", title="throughput, one core")
    left.legend()
    for name, levels in (("privllm", ours), ("nginx", theirs)):
        streams = [x["streams"] for x in levels]
        for q, style in (("p50", ":"), ("p99", "-")):
            values = [max(x[f"added_interchunk_delay_ms_{q}"], 0.1) for x in levels]
            right.plot(streams, values, linestyle=style, marker="o", color=colors[name], label=f"{name} {q}")
    right.axhline(25, color="red", linewidth=0.8, label="target p99")
    right.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="added inter-chunk delay (ms)")
    right.set_title("latency (below 0.1 ms, or negative: drawn at 0.1)")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="benchmark-results")
    p.add_argument("--levels", default="10,100,500,1000,2000")
    p.add_argument("--pairs", default="32", help="overhead: interleaved pairs of chats")
    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    def out(name: str) -> str:
        return os.path.join(args.out_dir, name)

    capacity_args = ["--levels", args.levels, "--light", "--shed-cap", SHED_CAP, "--shed-streams", SHED_STREAMS]
    results = {
        "overhead": run("benchmarks.overhead", out("overhead.json"), "--pairs", args.pairs),
        "capacity": run("benchmarks.capacity", out("capacity.json"), *capacity_args),
        "plain_proxy": run("benchmarks.plain_proxy", out("plain_proxy.json"), "--levels", args.levels),
        "scenarios": run("benchmarks.scenarios", out("scenarios.json")),
    }
    with open(out("results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results["capacity"], results["plain_proxy"], out("capacity.png"))
    print(f"results in {out('results.json')}, plot in {out('capacity.png')}")


if __name__ == "__main__":
    main()
