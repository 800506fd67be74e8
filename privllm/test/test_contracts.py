"""The real node clients, dialects and translators meet the contracts in privllm.upstream.contracts:
mypy checks the annotated assignments; the tests check at run time that each has every member,
callable as the contract declares it, so a member renamed on one side fails here too (the tests'
fakes are checked in test_fakes)."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from ..harmony.dialect import HarmonyDialect, HarmonyStream
from ..upstream.contracts import Dialect, Translator, UpstreamClient
from ..upstream.llama import LlamaServer
from ..upstream.openai_stream import ChatCompletionStream, ChatDialect
from .harmony_replay import encoding
from .helpers import contract_gaps, members


class Contracts(TestCase):
    def assert_meets(self, contract: type, obj: object) -> None:
        self.assertEqual(contract_gaps(contract, obj), [], f"{type(obj).__name__} against {contract.__name__}")

    def test_the_members_are_read_from_the_contracts(self) -> None:
        self.assertEqual(members(UpstreamClient), {"context", "count_tokens", "post_stream"})
        self.assertIn("upstream_complete", members(Translator))

    def test_clients(self) -> None:
        llama: UpstreamClient = LlamaServer(MemoryReactorClock(), "unix:///nonexistent/llama.sock", 1.0)
        self.assert_meets(UpstreamClient, llama)

    def test_dialects_and_their_translators(self) -> None:
        enc = encoding(os.path.abspath(self.mktemp()))
        dialects: list[Dialect] = [ChatDialect(), HarmonyDialect(enc, "low", Clock(), lambda: None)]
        translators: list[Translator] = [ChatCompletionStream(), HarmonyStream(enc, 0, lambda: None)]
        for dialect in dialects:
            self.assert_meets(Dialect, dialect)
        for translator in translators:
            self.assert_meets(Translator, translator)
