"""Fakes shared by the unit tests, each in place of a real interface. test_fakes lists every one
with what it stands for and checks it there (zope's verifyObject, or the members and signatures of
a typing.Protocol or class), so a member the real side gains and a fake lacks fails a test.
Where Twisted's own test tools fit (StringTransport, Clock, DummyRequest), the tests use those."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProcessTransport, IPushProducer, IReactorProcess
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from ..protocol.admission import Ask, Lease, Load, SealedRefusal
from ..upstream.openai_stream import ChatDialect


@implementer(IPushProducer)
class BodyTransport:
    """What a response body's protocol is given as its transport: stopping it loses the connection."""

    def __init__(self) -> None:
        self.stopped = False
        self.paused = False
        self.protocol: Protocol | None = None

    def stopProducing(self) -> None:
        if not self.stopped:
            self.stopped = True
            assert self.protocol is not None
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False


@implementer(IResponse)
class FakeResponse:
    """A response whose body the test sends, piece by piece, and ends when it chooses."""

    version = (b"HTTP", 1, 1)
    length = UNKNOWN_LENGTH
    request = None
    previousResponse: IResponse | None = None

    def __init__(self, code: int = 200) -> None:
        self.code = code
        self.phrase = RESPONSES.get(code, b"")
        self.headers = Headers()
        self.protocol: Any = None
        self.transport = BodyTransport()

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def end(self) -> None:
        self.protocol.connectionLost(Failure(ResponseDone()))


class FakeUpstream:
    """A node's client (privllm.upstream.contracts.UpstreamClient, LlamaServer's part a chat
    uses) whose answers the test gives; cancelling one is noted."""

    def __init__(self, context: int | None = None) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.pending: Deferred[Any] = Deferred()
        self.cancelled = False
        self.context = context  # tokens per slot, as LlamaServer learns it from /props
        self.counts: list[str] = []
        self.counting: Deferred[int] = Deferred()

    def count_tokens(self, text: str) -> Deferred[int]:
        self.counts.append(text)
        self.counting = Deferred(lambda _: setattr(self, "cancelled", True))
        return self.counting

    def post_stream(self, path: str, body: dict[str, Any]) -> Deferred[Any]:
        self.requests.append((path, body))
        self.pending = Deferred(lambda _: setattr(self, "cancelled", True))
        return self.pending


class ExactDialect(ChatDialect):
    """A chat dialect whose prompt length is known exactly, as Harmony's is."""

    @staticmethod
    def prompt_bounds(body: dict[str, Any]) -> tuple[int, int]:
        n = sum(len(m["content"]) for m in body["messages"])
        return n, n


class GoneLlama:
    """A node-local llama-server (LlamaServer, as NodeProxy uses it) that refuses every connection."""

    def post_stream(self, path: str, body: dict[str, Any] | bytes) -> Deferred[Any]:
        return fail(ConnectionRefusedError())


class PendingLlama:
    """A node-local llama-server (LlamaServer, as NodeProxy uses it) that has not answered yet."""

    def __init__(self) -> None:
        self.pending: Deferred[Any] = Deferred()

    def post_stream(self, path: str, body: dict[str, Any] | bytes) -> Deferred[Any]:
        return self.pending


class MetricsLlama:
    """llama-server's /metrics (LlamaServer.metrics_text), answered when the test says."""

    def __init__(self) -> None:
        self.answer: Deferred[bytes | None] = Deferred()

    async def metrics_text(self, timeout: float) -> bytes | None:
        return await self.answer


class LateState:
    """An AdmissionState whose answers the test gives, when it chooses."""

    def __init__(self) -> None:
        self.screens: list[Deferred[None]] = []
        self.commits: list[Deferred[Lease | SealedRefusal]] = []
        self.released: list[Lease] = []
        self.entries: list[Deferred[int]] = []
        self.committed: list[Ask] = []  # what each commit was asked, in order
        self.screened: list[Ask] = []  # what each screen was asked, in order

    def screen(self, ask: Ask) -> Deferred[None]:
        self.screened.append(ask)
        self.screens.append(Deferred())
        return self.screens[-1]

    def commit(self, ask: Ask, device: bytes) -> Deferred[Lease | SealedRefusal]:
        self.committed.append(ask)
        self.commits.append(Deferred())
        return self.commits[-1]

    def release(self, lease: Lease) -> None:
        self.released.append(lease)

    def load(self, now: float) -> Load:
        return Load(0, 0.0)

    def replay_entries(self, now: float) -> Deferred[int]:
        self.entries.append(Deferred())
        return self.entries[-1]


@implementer(IPolicyForHTTPS)
class RecordingPolicy:
    """A TLS policy (IPolicyForHTTPS) that notes when options are asked for, and gives none."""

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, int]] = []

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        self.asked.append((hostname, port))
        return None


@implementer(IProcessTransport)
class FakeProcess(StringTransport):
    """A spawned child: its pid, and the signals sent to it."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid
        self.signals: list[str | int] = []

    def signalProcess(self, signalID: str | int) -> None:
        self.signals.append(signalID)

    def closeStdin(self) -> None:
        pass

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.write(data)


Spawned = tuple[Any, list[str], Any, Any]  # protocol, args, env, childFDs


@implementer(IReactorProcess)
class FakeReactor(Clock):
    """A Clock that records spawned processes and connects their protocols, as a reactor does."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []
        self.next_pid = 100

    def spawnProcess(
        self,
        processProtocol: Any,  # an IProcessProtocol
        executable: bytes | str,
        args: Any = (),
        env: Any = None,
        path: Any = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        self.next_pid += 1
        process = FakeProcess(self.next_pid)
        processProtocol.makeConnection(process)
        self.spawned.append((processProtocol, list(args), env, childFDs))
        return process


class ProcessMemoryReactor(FakeReactor, MemoryReactorClock):
    """A MemoryReactorClock (listeners, connections, time) that also spawns like FakeReactor:
    enough to build a parent of workers, whose supervisor asks for IReactorProcess."""
