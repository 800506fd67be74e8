"""
The whole benchmark suite in one command, bounded in time and loopback only:

    python -m benchmarks [--out-dir benchmark-results]

runs the overhead comparison, the capacity ramp, the same ramp through nginx and the load
scenarios, writes every figure with the
machine's description to results.json and, where matplotlib is installed
(`pip install matplotlib`), capacity.png (sealed chunks per second and added delay against
concurrent streams). docs/performance.md explains the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def run(module: str, out: str, *extra: str) -> dict:
    subprocess.run([sys.executable, "-m", module, "--out", out, *extra], check=True, timeout=1800)
    with open(out) as f:
        return json.load(f)


def plot(capacity: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = capacity["levels"]
    streams = [level["streams"] for level in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(streams, [level["sealed_chunks_per_second"] for level in levels], marker="o")
    left.set(
        xscale="log", xlabel="concurrent streams", ylabel="sealed chunks / s", title="throughput (one router core)"
    )
    right.plot(streams, [level["added_interchunk_delay_ms_p50"] for level in levels], marker="o", label="p50")
    right.plot(streams, [level["added_interchunk_delay_ms_p99"] for level in levels], marker="o", label="p99")
    right.set(xscale="log", xlabel="concurrent streams", ylabel="added inter-chunk delay (ms)", title="latency")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="benchmark-results")
    p.add_argument("--levels", default="10,100,500")
    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    results = {
        "overhead": run("benchmarks.overhead", os.path.join(args.out_dir, "overhead.json"), "--pairs", "16"),
        "capacity": run("benchmarks.capacity", os.path.join(args.out_dir, "capacity.json"), "--levels", args.levels),
        "plain_proxy": run(
            "benchmarks.plain_proxy", os.path.join(args.out_dir, "plain_proxy.json"), "--levels", args.levels
        ),
    }
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    drawn = plot(results["capacity"], os.path.join(args.out_dir, "capacity.png"))
    print(f"results in {args.out_dir}/results.json" + ("" if drawn else " (no plot: matplotlib is not installed)"))


if __name__ == "__main__":
    main()
