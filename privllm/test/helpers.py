"""Small builders shared by the unit tests."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
from dataclasses import replace
from types import ModuleType
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

import privllm

from ..config.schema import Config
from ..protocol import suite
from ..protocol.admission import Admission, PowGate
from ..protocol.chat import ChatLimits
from ..protocol.keyring import KeyRing, RingKey
from ..protocol.request import Encapsulation, SealedRequest, new_request_id, seal_request
from ..state.gate import AdmissionGate
from ..state.interface import Limits
from ..state.memory import MemoryState
from ..upstream.breaker import CircuitBreaker
from ..upstream.contracts import UpstreamClient
from ..upstream.pool import Node, NodePool
from ..web.chat import StreamSettings

NOW = 1_800_000_000


def chat_limits(**changes: Any) -> ChatLimits:
    """The configuration's defaults, with `changes`."""
    return replace(Config().chat_limits(), **changes)


def stream_settings(**changes: Any) -> StreamSettings:
    """The configuration's defaults, with `changes`."""
    return replace(StreamSettings.from_config(Config()), **changes)


def ring(now: int = NOW, interval: int = 86400, overlap: int = 3600) -> KeyRing:
    r = KeyRing([], interval, overlap)
    r.refresh(now, suite.new_private_key)
    return r


def current_key(r: KeyRing, now: int = NOW) -> RingKey:
    published = r.published(now)[0]
    key = r.accepting(published.key_id, now)
    assert key is not None
    return key


def sealed_request(
    key: RingKey,
    device: bytes | None = None,
    timestamp: int = NOW,
    request_id: str | None = None,
    plaintext: dict[str, Any] | None = None,
    encapsulation: Encapsulation | None = None,
) -> SealedRequest:
    return seal_request(
        key_id=key.key_id,
        router_public_key=key.public_key,
        device_private_key=device or os.urandom(32),
        plaintext=plaintext or {"messages": [{"role": "user", "content": "hi"}]},
        timestamp=timestamp,
        request_id=request_id or new_request_id(),
        encapsulation=encapsulation,
    )


def limits(**overrides: Any) -> Limits:
    """Roomy limits for tests; each test tightens the one it is about."""
    values: dict[str, Any] = dict(
        address_rate=100.0,
        address_burst=100,
        device_rate=1e6,
        device_burst=10**6,
        max_streams=1000,
        max_streams_per_device=1000,
        max_streams_per_address=1000,
        replay_window=60,
        replay_future_skew=5,
        replay_max_entries=1000,
        replay_max_per_address=1000,
        pow_max_spent=1000,
        max_addresses=100_000,
        max_devices=100_000,
        relay_rate=1000.0,
        relay_burst=1000,
        relay_streams=1000,
        relay_replay_entries=1000,
    )
    values.update(overrides)
    return Limits(**values)


def memory_gate(r: KeyRing, max_body: int = 65536, pow_gate: PowGate | None = None, **overrides: Any) -> AdmissionGate:
    """Admission with its state in memory, as one router process has it."""
    state = MemoryState(limits(**overrides))
    return AdmissionGate(
        Admission(r, max_body, state.limits.replay_window, state.limits.replay_future_skew, pow_gate), state
    )


T = TypeVar("T")


def settled(d: Deferred[T]) -> T:
    """The result of a Deferred that has already fired (the memory state answers at once);
    its failure is raised."""
    results: list[T] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    if not results:
        raise AssertionError("the Deferred has not fired")
    return results[0]


# A chat's stream: its keys, and what a node sends (OpenAI-compatible SSE).

ENC = os.urandom(32)
SECRET = os.urandom(32)


def pool_of(*upstreams: UpstreamClient) -> NodePool:
    nodes = [Node(f"node{i}", u, CircuitBreaker(3, 10), healthy=True) for i, u in enumerate(upstreams)]
    return NodePool(nodes)


def delta(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": text}, "finish_reason": None}]}).encode() + b"\n\n"


FINISH = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":2}}\n\ndata: [DONE]\n\n'


# Stand-ins and what they stand for.


def members(contract: type) -> set[str]:
    """The public members a class or typing.Protocol declares: methods, properties, annotated attributes."""
    names = set(vars(contract)) | set(vars(contract).get("__annotations__", {}))
    return {name for name in names if not name.startswith("_")}


def contract_gaps(contract: type, obj: object, names: set[str] | None = None) -> list[str]:
    """What `obj` lacks of `contract` (a typing.Protocol, or the class it stands in for), by name:
    a member missing, a method that cannot be called every way the contract's can, or one that is a
    coroutine function on one side only. `names` limits the check to the members a caller uses."""
    gaps = []
    for name in sorted(members(contract) if names is None else names):
        if not hasattr(obj, name):
            gaps.append(f"{name}: missing")
            continue
        want = inspect.getattr_static(contract, name, None)
        if want is None or isinstance(want, property):
            continue  # an attribute: having it is the contract
        have = getattr(obj, name)
        if not callable(have):
            gaps.append(f"{name}: not a method")
            continue
        if inspect.iscoroutinefunction(getattr(contract, name)) != inspect.iscoroutinefunction(have):
            gaps.append(f"{name}: a coroutine function on one side only")
        gaps += [f"{name}: {problem}" for problem in call_gaps(want, have)]
    return gaps


def call_gaps(want: Any, have: Any) -> list[str]:
    """The ways of calling `want` (unbound, as declared on a class) that `have` (bound) refuses."""
    function = want.__func__ if isinstance(want, staticmethod | classmethod) else want
    params = list(inspect.signature(function).parameters.values())
    if not isinstance(want, staticmethod):
        params = params[1:]  # self, or cls
    params = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    by_position = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword_only = {p.name: None for p in params if p.kind == p.KEYWORD_ONLY}
    required = [p for p in by_position if p.default is p.empty]
    calls = {
        "every argument by position": ([None] * len(by_position), keyword_only),
        "the required arguments only": (
            [None] * len(required),
            {p.name: None for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty},
        ),
        "arguments by name": (
            [None] * sum(p.kind == p.POSITIONAL_ONLY for p in by_position),
            {p.name: None for p in params if p.kind != p.POSITIONAL_ONLY},
        ),
    }
    gaps = []
    signature = inspect.signature(have)
    for how, (args, kwargs) in calls.items():
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            gaps.append(f"called with {how}: {e}")
    return gaps


def privllm_modules() -> list[ModuleType]:
    """Every module of privllm but its tests and the `python -m` entry points (which run)."""
    names = [m.name for m in pkgutil.walk_packages(privllm.__path__, "privllm.")]
    return [
        importlib.import_module(name)
        for name in names
        if not name.startswith("privllm.test") and not name.endswith(".__main__")
    ]


def open_sockets() -> set[str]:
    """This process's open sockets, by inode (Python and the reactor open other files once, lazily)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found
