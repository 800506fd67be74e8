"""Short runs of every benchmark, so the suite cannot rot. They check that figures come out
and that the router sheds, not that targets are met: speed is judged from full runs
(scripts/bench, docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from benchmarks.timed_response import Response

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


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class TimedResponse(TestCase):
    """The load generator's response reader (test equipment) counts what it should at any split."""

    HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    BODY = chunked(
        b"event: init\ndata: x\n\n",
        b"event: chunk\ndata: a\n\n",
        b"event: chunk\ndata: b\n\nevent: ch",
        b"unk\ndata: c\n\n",
    )

    def test_every_split_point(self) -> None:
        whole = self.HEAD + self.BODY
        for i in range(len(whole) + 1):
            arrivals: list[float] = []
            response = Response(arrivals)
            done = response.feed(whole[:i], 1.0) if i else False
            done = response.feed(whole[i:], 2.0) or done
            self.assertTrue(done, i)
            self.assertEqual((response.status, len(arrivals)), (200, 3), i)

    def test_refusal_keeps_its_code(self) -> None:
        body = b'{"error":"unavailable"}'
        response = Response([])
        head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n" % len(body)
        self.assertTrue(response.feed(head + body, 1.0))
        self.assertEqual(response.error_code(), "unavailable")


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


class PerDelta(TestCase):
    timeout = 120

    def run_per_delta(self, *args: str) -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.per_delta",
                "--deltas",
                "400",
                "--per-read",
                "2",
                "--tls",
                "--http",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=100,
            cwd=ROOT,
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        return done.stdout

    def test_smoke(self) -> None:
        rounds = json.loads(self.run_per_delta("--rounds", "2", "--json"))["rounds"]
        self.assertEqual(len(rounds), 2)
        self.assertTrue(all(r > 0 for r in rounds), rounds)

    def test_compare_alternates_two_trees(self) -> None:
        out = self.run_per_delta("--compare", ROOT, ROOT, "--pairs", "2")
        self.assertIn("2 pairs", out)
        self.assertIn("of 2 pairs", out)


class V2Cost(TestCase):
    timeout = 300

    def test_smoke(self) -> None:
        report = run_benchmark(self, "benchmarks.v2_cost", "--chats", "2", "--max-tokens", "8")
        self.assertEqual(set(report["paths"]), {"v1 direct", "v2 direct", "v1 via nginx", "v2 via relay"})
        for path in report["paths"].values():
            self.assertEqual(path["chats"], 2)
            self.assertGreater(path["ttft_ms"]["median"], 0)
            self.assertGreater(path["answer_bytes"]["min"], 0)
        # the same sealed request is what the relay forwards: its size does not change on the way
        paths = report["paths"]
        self.assertEqual(
            paths["v2 direct"]["request_bytes"]["median"], paths["v2 via relay"]["request_bytes"]["median"]
        )
