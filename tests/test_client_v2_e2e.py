"""
privllm's own client speaking protocol v2 to the real stack: twistd running privllm with
llama-server and SmolLM2 over real TLS. The library (deltas as they arrive, a clock off by an
hour corrected from the router's sealed date, proof of work bound to enc) and privllm-chat
--protocol 2 as a child process.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from privllm.client import PrivllmClient
from privllm.protocol.encoding import b64encode
from privllm.protocol.v2.request import peek
from privllm.test.stack import Daemon, shared

from .test_e2e import QUESTION, ROUTER, user

reactor: Any = _reactor
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POW_BITS = 10
_stressed: list[Daemon] = []


def stressed() -> Daemon:
    """A router asking every request for proof of work, on the shared llama-server."""
    if not _stressed:
        llama = shared(*ROUTER).llama_socket
        sections = {
            "llama": {"spawn": False},
            "backend": {"urls": [f"unix://{llama}"]},
            "pow": {"forced": True, "base_difficulty": POW_BITS, "max_difficulty": POW_BITS},
        }
        daemon = Daemon(sections, name="v2-client-pow")
        atexit.register(daemon.cleanup)
        _stressed.append(daemon.start())
    return _stressed[0]


class ClientV2(TestCase):
    timeout = 300

    def client(self, daemon: Daemon) -> PrivllmClient:
        client = PrivllmClient(reactor, daemon.url, daemon.pin(), os.urandom(32), daemon.cert(), protocol=2)
        self.addCleanup(client.close)
        return client

    async def test_answer_streams_through_the_library(self) -> None:
        client = self.client(shared(*ROUTER))
        arrivals: list[tuple[str, float]] = []
        result = await client.chat(user(QUESTION, 64), lambda c: arrivals.append((c["type"], time.monotonic())))
        self.assertIn(result.finish_reason, ("stop", "length"))
        self.assertTrue(result.text.strip())
        deltas = [t for kind, t in arrivals if kind == "delta"]
        self.assertGreater(len(deltas), 3)
        self.assertGreater(deltas[-1] - deltas[0], 0.0, "deltas handed on as they arrive, not all at once")
        self.assertEqual(arrivals[-1][0], "done")
        again = await client.chat(user("Say hi.", 8))
        self.assertTrue(again.text.strip())

    async def test_a_wrong_clock_is_corrected_once_from_the_sealed_date(self) -> None:
        """The request's time an hour behind: the router answers stale inside with its date,
        the client corrects its offset and the new request is answered."""
        client = self.client(shared(*ROUTER))
        self.patch(client, "_clock_offset", -3600)
        result = await client.chat(user("Say hi.", 8))
        self.assertTrue(result.text.strip())
        self.assertLessEqual(abs(client._clock_offset), 5)

    async def test_proof_of_work_bound_to_enc(self) -> None:
        daemon = stressed()
        client = self.client(daemon)
        sent: list[bytes] = []
        post = client._post_to

        async def recording(url: bytes, data: bytes, headers: dict[bytes, list[bytes]]) -> Any:
            sent.append(data)
            return await post(url, data, headers)

        self.patch(client, "_post_to", recording)
        result = await client.chat(user("Say hi.", 8))
        self.assertTrue(result.text.strip())
        self.assertEqual(len(sent), 2, "asked for work, then the same request with it")
        self.assertEqual(peek(sent[0]).enc, peek(sent[1]).enc)

    async def test_privllm_chat_protocol_2(self) -> None:
        daemon = shared(*ROUTER)
        ca = os.path.join(self.mktemp())
        with open(ca, "wb") as f:
            f.write(daemon.cert())
        device = os.path.join(os.path.abspath(self.mktemp()), "device.key")
        args = ["-m", "privllm.client", "Say hi.", "--max-tokens", "8", "--protocol", "2", "--url", daemon.url]
        args += ["--pin", b64encode(daemon.pin()), "--ca", ca, "--device-key", device]
        env = {"PYTHONPATH": ROOT, "PATH": os.environ.get("PATH", "")}
        out, err, code = await getProcessOutputAndValue(sys.executable, args, env=env, reactor=reactor)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.strip())
