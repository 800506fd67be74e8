"""The real node clients, dialects and translators, and the tests' stand-ins, meet the contracts
in privllm.upstream.contracts: mypy checks the annotated assignments; the tests check at run
time that each has every member, so a member renamed on one side fails here too."""

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
from .test_chat_hostile import ExactDialect
from .test_chat_stream import SyntheticUpstream


def members(contract: type) -> set[str]:
    return {name for name in vars(contract) if not name.startswith("_")}


class Contracts(TestCase):
    def assert_meets(self, contract: type, obj: object) -> None:
        missing = {name for name in members(contract) if not hasattr(obj, name)}
        self.assertEqual(missing, set(), f"{type(obj).__name__} lacks members of {contract.__name__}")

    def test_the_members_are_read_from_the_contracts(self) -> None:
        self.assertEqual(members(UpstreamClient), {"context", "count_tokens", "post_stream"})
        self.assertIn("upstream_complete", members(Translator))

    def test_clients(self) -> None:
        llama: UpstreamClient = LlamaServer(MemoryReactorClock(), "unix:///nonexistent/llama.sock", 1.0)
        synthetic: UpstreamClient = SyntheticUpstream()
        for client in (llama, synthetic):
            self.assert_meets(UpstreamClient, client)

    def test_dialects_and_their_translators(self) -> None:
        enc = encoding(os.path.abspath(self.mktemp()))
        dialects: list[Dialect] = [ChatDialect(), ExactDialect(), HarmonyDialect(enc, "low", Clock(), lambda: None)]
        translators: list[Translator] = [ChatCompletionStream(), HarmonyStream(enc, 0, lambda: None)]
        for dialect in dialects:
            self.assert_meets(Dialect, dialect)
        for translator in translators:
            self.assert_meets(Translator, translator)
