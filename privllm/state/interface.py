"""
What admission asks of the state it shares with other router processes.

privllm.protocol.admission does every stateless check and asks the state twice per request:

- `screen`, before decryption: count the request against its address (GCRA) and in the load,
  then, in this order, refuse it with the stateless refusal it already carries, for the global
  stream cap (503 unavailable), for the address's concurrent streams (429), for a request id
  or encapsulated key already seen (409 replay; Redis: 401 stale while a restarted Redis's
  floor lives), for no room in the replay window (429, or 503 when the whole window is full),
  or for a proof of work already spent (PowSpent). The work is spent last, so a request
  refused for anything else keeps it, and a replay is answered as one.
- `commit`, once it decrypted: remember it in the replay window (409 if another process
  remembered it meanwhile), count it against its device (GCRA), and lease a stream for the
  global, per-address and per-device caps; or return the sealed refusal to send.

Every per-address limit (rate, streams, replay share) is the ask's `Limits.address_budget`:
an ask from an Oblivious HTTP relay (`Ask.relay`) is held to the relay's bigger budget, at the
same address key, so a relay's clients share the relay's budget rather than one client's.

`release` gives a lease back when the stream ends. `screen` and `commit` may fail with
StateUnavailable: the request is then refused with 503 before anything is sent (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from ..protocol.admission import Ask, Lease, Load, SealedRefusal
from .errors import StateError

__all__ = [
    "ADDRESS_STREAMS_RETRY",
    "DEVICE_LIMITED",
    "OVERLOADED",
    "AddressBudget",
    "AdmissionState",
    "Limits",
    "PowSpent",
    "StateUnavailable",
]

OVERLOADED = SealedRefusal("overloaded", "too many answers at once; try again shortly", reason="stream_cap")
DEVICE_LIMITED = "too many requests from this device"
ADDRESS_STREAMS_RETRY = 1  # seconds: streams end at any time


class StateUnavailable(StateError):
    """The shared state did not answer in time, or answered nonsense: refuse (503), never guess."""

    code = "state_unavailable"


class PowSpent(StateError):
    """The proof of work was good but has already admitted a request: ask for a new one."""

    code = "pow_spent"


@dataclass(frozen=True)
class Limits:
    """Every limit the state enforces: one source for every backend."""

    address_rate: float
    address_burst: int
    device_rate: float
    device_burst: int
    max_streams: int
    max_streams_per_device: int
    max_streams_per_address: int
    replay_window: int
    replay_future_skew: int
    replay_max_entries: int
    replay_max_per_address: int
    pow_max_spent: int
    max_addresses: int  # memory only: rate-limit tables' size (Redis is bounded by maxmemory)
    max_devices: int
    # an Oblivious HTTP relay's own (bigger) per-address budgets: it carries many clients
    relay_rate: float
    relay_burst: int
    relay_streams: int
    relay_replay_entries: int

    def address_budget(self, relay: bool) -> AddressBudget:
        """The per-address limits an ask is held to: a relay's, or a single client's."""
        if relay:
            return AddressBudget(self.relay_rate, self.relay_burst, self.relay_streams, self.relay_replay_entries)
        return AddressBudget(
            self.address_rate, self.address_burst, self.max_streams_per_address, self.replay_max_per_address
        )


@dataclass(frozen=True)
class AddressBudget:
    """What one address key may spend: requests (rate, burst), concurrent streams, replay entries."""

    rate: float
    burst: int
    streams: int
    replay_entries: int


class AdmissionState(Protocol):
    def screen(self, ask: Ask) -> Deferred[None]:
        """Fires with None, or fails with RequestRejected, PowSpent or StateUnavailable."""

    def commit(self, ask: Ask, device: bytes) -> Deferred[Lease | SealedRefusal]:
        """Fires with a lease, or with a sealed refusal (then nothing is held); fails with
        RequestRejected (a replay that raced) or StateUnavailable."""

    def release(self, lease: Lease) -> None:
        """Give the lease back; a lost release ends with the lease's expiry."""

    def load(self, now: float) -> Load:
        """The latest load this process knows, for the next difficulty."""

    def replay_entries(self, now: float) -> Deferred[int]:
        """Entries in the replay window now (for the operator's gauge), or StateUnavailable."""
