"""
Privacy on the real stack: a canary that must leave no trace, and chunk sizes that must
not follow the answer's token lengths.
"""

from __future__ import annotations

import base64
import math
import os
import statistics
import time
import uuid

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from privllm.client import PrivllmClient, ServerError

from .docclient import DocClient, open_stream, sealed_chunks
from .stack import Daemon, shared
from .synthetic import broken_upstream
from .test_e2e import ROUTER, user


def correlation(xs: list[float], ys: list[float]) -> float:
    """Pearson's r; 0 when either side does not vary (nothing can be inferred from a constant)."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return 0.0
    return statistics.correlation(xs, ys)


def needles(canary: bytes) -> list[bytes]:
    """The canary, and its base64 at each of the three alignments it can have inside a longer value."""
    found = [canary]
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + canary)
        found.append(encoded[math.ceil(4 * k / 3) + 1 : -4])
    return found


def files_under(*roots: str) -> list[str]:
    paths = []
    for root in roots:
        for directory, _, names in os.walk(root):
            paths += [os.path.join(directory, n) for n in names]
    return paths


class SideChannels(TestCase):
    timeout = 300

    def test_chunk_sizes_do_not_follow_token_lengths(self) -> None:
        router = shared(*ROUTER)
        doc = DocClient(router.port, router.ssl_context(), router.pin())
        raw, enc, secret = doc.chat_raw(user("Who were the US presidents in the 1990s? Answer in detail.", 200))
        chunks = open_stream(raw, enc, secret)
        sizes = [len(s) for s in sealed_chunks(raw)]
        deltas = [
            (len(c["text"].encode()), size) for c, size in zip(chunks, sizes, strict=True) if c["type"] == "delta"
        ]
        self.assertGreater(len(deltas), 5, "a real answer of many chunks")
        self.assertLessEqual(len({size for _, size in deltas}), 2, sizes)
        r = correlation([float(n) for n, _ in deltas], [float(s) for _, s in deltas])
        self.assertLess(abs(r), 0.1, (r, deltas))


class Canary(TestCase):
    timeout = 300

    async def _canary(self) -> None:
        canary = f"CANARY{uuid.uuid4().hex}"
        router = shared(*ROUTER)

        # A failing upstream (test equipment) behind its own router.
        socket_path = os.path.join(self.mktemp() + ".sock")
        socket_path = os.path.abspath(socket_path)
        broken = Daemon({"llama": {"spawn": False}, "backend": {"urls": [f"unix://{socket_path}"]}}, name="broken")
        self.addCleanup(broken.cleanup)
        listening, chat = broken_upstream(reactor, socket_path)
        port = await listening
        self.addCleanup(port.stopListening)
        broken.start(wait_ready=False)
        await broken.ready(reactor)

        # 1. A real answer through the real stack.
        client = PrivllmClient(reactor, router.url, router.pin(), os.urandom(32), router.cert())
        self.addCleanup(client.close)
        result = await client.chat(user(f"Repeat after me: {canary}", 48))
        answer = result.text.strip()
        self.assertTrue(answer)

        # 2. A malformed plaintext (it decrypts, but is not JSON).
        doc = DocClient(router.port, router.ssl_context(), router.pin())
        chunks = doc.chat(f"not json {canary}".encode())
        self.assertEqual(chunks[-1]["code"], "bad_request")

        # 3. An upstream that fails mid-answer.
        broken_client = PrivllmClient(reactor, broken.url, broken.pin(), os.urandom(32), broken.cert())
        self.addCleanup(broken_client.close)
        with self.assertRaises(ServerError) as cm:
            await broken_client.chat(user(f"Tell me about {canary}"))
        self.assertEqual(cm.exception.code, "upstream_failed")
        self.assertEqual(chat.requests, 1)

        time.sleep(0.5)  # let both daemons finish their log lines
        searched = files_under(router.dir, broken.dir)
        self.assertIn(router.log_path, searched)
        self.assertIn(os.path.join(router.state_dir, "hpke-keyring.json"), searched)
        hits = []
        for path in searched:
            if path.endswith(".sock"):
                continue
            with open(path, "rb") as f:
                data = f.read()
            hits += [(path, n) for n in [*needles(canary.encode()), answer[:40].encode()] if n in data]
        self.assertEqual(hits, [])

    def test_canary_leaves_no_trace(self):
        return ensureDeferred(self._canary())
