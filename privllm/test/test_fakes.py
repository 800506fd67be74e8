"""Every fake in privllm.test.fakes, with what it stands for, checked against it: a zope interface
with verifyObject, a typing.Protocol or a real class by its members and their signatures. A
member the real side gains and a fake lacks, or a call the fake refuses, fails here."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IProcessTransport, IPushProducer, IReactorProcess, IReactorSocket, IReactorTime
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import Interface
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from ..state.interface import AdmissionState
from ..upstream.contracts import Dialect, UpstreamClient
from ..upstream.llama import LlamaServer
from . import fakes
from .helpers import contract_gaps

# Each fake, how to make one, and what it stands for: zope interfaces it must provide, or a
# Protocol or class whose members (all of them, or the ones its callers use) it must have.
Contract = type | tuple[type, set[str]]
FAKES: dict[type, tuple[Callable[[], object], list[Contract]]] = {
    fakes.BodyTransport: (fakes.BodyTransport, [IPushProducer]),
    fakes.FakeResponse: (fakes.FakeResponse, [IResponse]),
    fakes.FakeUpstream: (fakes.FakeUpstream, [UpstreamClient]),
    fakes.ExactDialect: (fakes.ExactDialect, [Dialect]),
    fakes.GoneLlama: (fakes.GoneLlama, [(LlamaServer, {"post_stream"})]),  # as NodeProxy uses it
    fakes.PendingLlama: (fakes.PendingLlama, [(LlamaServer, {"post_stream"})]),
    fakes.MetricsLlama: (fakes.MetricsLlama, [(LlamaServer, {"metrics_text"})]),  # as LlamaMetrics uses it
    fakes.LateState: (fakes.LateState, [AdmissionState]),
    fakes.RecordingPolicy: (fakes.RecordingPolicy, [IPolicyForHTTPS]),
    fakes.FakeProcess: (lambda: fakes.FakeProcess(1), [IProcessTransport]),
    fakes.FakeReactor: (fakes.FakeReactor, [IReactorTime, IReactorProcess]),
    fakes.ProcessMemoryReactor: (fakes.ProcessMemoryReactor, [IReactorTime, IReactorProcess, IReactorSocket]),
}


def problems(contract: Contract, obj: object) -> list[str]:
    if isinstance(contract, tuple):
        real, names = contract
        return contract_gaps(real, obj, names)
    if issubclass(contract, Interface):  # type: ignore[arg-type]
        try:
            verifyObject(contract, obj)  # type: ignore[arg-type]
        except Invalid as e:
            return [str(e)]
        return []
    return contract_gaps(contract, obj)


class Fakes(TestCase):
    def test_every_fake_is_listed(self) -> None:
        defined = {
            value for value in vars(fakes).values() if inspect.isclass(value) and value.__module__ == fakes.__name__
        }
        self.assertEqual(defined, set(FAKES))

    def test_each_meets_what_it_stands_for(self) -> None:
        for fake, (make, contracts) in FAKES.items():
            for contract in contracts:
                with self.subTest(fake=fake.__name__, contract=repr(contract)):
                    self.assertEqual(problems(contract, make()), [])


class Gap:
    def count_tokens(self, text: str, extra: int) -> Any: ...

    async def post_stream(self, path: str, body: dict[str, Any]) -> Any: ...


class Checks(TestCase):
    """The checks above can fail: each kind of gap is found."""

    def test_a_missing_member_a_wrong_signature_and_a_coroutine(self) -> None:
        self.assertEqual(
            [gap.split(":")[0] for gap in contract_gaps(UpstreamClient, Gap())],
            ["context", "count_tokens", "count_tokens", "count_tokens", "post_stream"],
        )

    def test_a_renamed_argument(self) -> None:
        class Renamed:
            def release(self, held: Any) -> None: ...

        gaps = contract_gaps(AdmissionState, Renamed(), {"release"})
        self.assertEqual(len(gaps), 1)
        self.assertIn("by name", gaps[0])

    def test_a_zope_interface(self) -> None:
        self.assertNotEqual(problems(IPushProducer, Gap()), [])
