"""Small builders shared by the unit tests."""

from __future__ import annotations

import os
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ..protocol import suite
from ..protocol.admission import Admission, PowGate
from ..protocol.keyring import KeyRing, RingKey
from ..protocol.request import Encapsulation, SealedRequest, new_request_id, seal_request
from ..state.gate import AdmissionGate
from ..state.interface import Limits
from ..state.memory import MemoryState

NOW = 1_800_000_000


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
