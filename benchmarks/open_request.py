"""
The router's admission cost in HPKE open: `open_request` with a ring key, timed in-process.

    python -m benchmarks.open_request [--number 3000] [--rounds 10]

Prints microseconds per open for each round and their median, min and max: the machine is
shared, so compare runs made alternately (issue 11 compared this against the code before
ring keys held their private key object).
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit

from privllm.protocol.envelope import parse_envelope
from privllm.protocol.request import open_request
from privllm.test.helpers import current_key, ring, sealed_request


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--number", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    key = current_key(ring())
    envelope = parse_envelope(json.dumps(sealed_request(key).body).encode(), max_ciphertext=65536)
    open_request(envelope, key.secret)
    rounds = [
        1e6 * timeit.timeit(lambda: open_request(envelope, key.secret), number=args.number) / args.number
        for _ in range(args.rounds)
    ]
    print(" ".join(f"{r:.1f}" for r in rounds))
    print(f"us per open: median {statistics.median(rounds):.1f}, min {min(rounds):.1f}, max {max(rounds):.1f}")


if __name__ == "__main__":
    main()
