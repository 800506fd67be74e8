"""Short runs of every benchmark, so the suite cannot rot. They check that figures come out
and that the router sheds, not that targets are met: speed is judged from full runs
(scripts/bench, docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

ROOT = os.path.join(os.path.dirname(__file__), "..")


def run_benchmark(test: TestCase, module: str, *args: str) -> dict:
    """Run `python -m module ... --out FILE` as a user would; return the figures it wrote."""
    out = os.path.abspath(test.mktemp() + ".json")
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", out], capture_output=True, text=True, timeout=240, cwd=ROOT
    )
    test.assertEqual(done.returncode, 0, done.stderr[-2000:])
    with open(out) as f:
        return json.load(f)


class Overhead(TestCase):
    timeout = 300

    def test_smoke(self) -> None:
        report = run_benchmark(self, "benchmarks.overhead", "--pairs", "2", "--max-tokens", "24")
        for side in ("llama_server", "privllm"):
            self.assertGreater(report[side]["tokens_per_second_median"], 0)
            self.assertGreater(report[side]["ttft_median_ms"], 0)
        self.assertGreater(report["tokens_per_second_ratio"], 0)
        self.assertEqual(report["machine"]["cpus"], os.cpu_count())


class Capacity(TestCase):
    timeout = 300

    def test_smoke_and_shedding(self) -> None:
        args = (
            "--levels",
            "10",
            "--deltas",
            "10",
            "--ramp",
            "0.3",
            "--shed-cap",
            "5",
            "--short-seconds",
            "0",
            "--light",
        )
        report = run_benchmark(self, "benchmarks.capacity", *args)
        first = report["levels"][0]
        self.assertEqual((first["completed"], first["errors"]), (10, {}))
        self.assertGreater(first["sealed_chunks_per_second"], 0)
        # Past the cap the router refuses new streams (503 before decryption) and finishes the others.
        shed = report["shedding"]
        self.assertEqual(shed["completed"], 5)
        self.assertEqual(shed["errors"], {"unavailable": 5})
        self.assertGreater(report["levels"][0]["test_equipment_cpu_percent"], 0)


class PlainProxy(TestCase):
    timeout = 300

    def test_smoke(self) -> None:
        report = run_benchmark(self, "benchmarks.plain_proxy", "--levels", "10", "--deltas", "10", "--ramp", "0.3")
        level = report["levels"][0]
        self.assertEqual((level["completed"], level["errors"]), (10, {}))
        self.assertGreater(level["events_per_second"], 0)


class Scenarios(TestCase):
    timeout = 300

    def test_smoke(self) -> None:
        report = run_benchmark(self, "benchmarks.scenarios", "--only", "spike", "--scale", "0.1")
        spike = report["scenarios"]["spike"]
        self.assertEqual(spike["chats"], 4 + 15 + 4)
        self.assertEqual((spike["completed"], spike["errors"]), (spike["chats"], {}))
        self.assertGreater(spike["first_chunk_ms"]["p50"], 0)
