"""
The admission state in this process's memory: the default, right for one router process.

Every answer is ready at once (the Deferreds have already fired), so a request is admitted in
one reactor turn, as it was before there was a choice of backend. The pieces are the sans-IO
limiters of privllm.protocol; this class only asks them in the order privllm.state.interface
gives.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, fail, succeed

from ..protocol.admission import Ask, Lease, Load, SealedRefusal
from ..protocol.errors import RATE_LIMITED, UNAVAILABLE, RequestRejected
from ..protocol.expiring import ExpiringSet
from ..protocol.pow import RateMeter
from ..protocol.ratelimit import Budget, RateLimiter
from ..protocol.replay import ReplayWindow
from ..protocol.slots import CountPerKey, StreamSlots
from .interface import ADDRESS_STREAMS_RETRY, DEVICE_LIMITED, OVERLOADED, Limits, PowSpent

__all__ = ["LEASE_TOKEN_SIZE", "MemoryState"]

LEASE_TOKEN_SIZE = 16


class MemoryState:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.replay = ReplayWindow(
            limits.replay_window,
            limits.replay_max_entries,
            limits.replay_future_skew,
            limits.replay_max_per_address,
        )
        self.per_address = RateLimiter(limits.address_rate, limits.address_burst, limits.max_addresses)
        # an ask is held to its address budget: a client's, or a relay's at the same key
        self.budgets = {relay: limits.address_budget(relay) for relay in (False, True)}
        self.relay_rate = Budget(limits.relay_rate, limits.relay_burst)
        self.per_device = RateLimiter(limits.device_rate, limits.device_burst, limits.max_devices)
        self.slots = StreamSlots(limits.max_streams, limits.max_streams_per_device)
        self.address_streams = CountPerKey(limits.max_streams_per_address)
        self.spent = ExpiringSet(limits.pow_max_spent)
        self.rate = RateMeter()

    def screen(self, ask: Ask) -> Deferred[None]:
        try:
            self._screen(ask)
        except (RequestRejected, PowSpent) as e:
            return fail(e)
        return succeed(None)

    def _screen(self, ask: Ask) -> None:
        budget = self.budgets[ask.relay]
        wait = self.per_address.check(ask.address, ask.now, self.relay_rate if ask.relay else None)
        if wait:
            raise RequestRejected(RATE_LIMITED, retry_after=wait, reason="address_rate")
        self.rate.add(ask.now)  # the load: requests that passed their address's limit
        if ask.refusal is not None:
            raise ask.refusal
        if self.slots.full():
            raise RequestRejected(UNAVAILABLE, reason="stream_cap")
        if not self.address_streams.room(ask.address, budget.streams):
            raise RequestRejected(RATE_LIMITED, retry_after=ADDRESS_STREAMS_RETRY, reason="stream_cap")
        seconds = int(ask.now)
        self.replay.check_unseen(ask.request_id, ask.encapsulated_key, seconds)
        self.replay.check_room(ask.address, seconds, budget.replay_entries)
        if ask.pow_token is not None:  # last: a request refused above does not spend its work
            self._spend(ask.pow_token, ask.pow_expires, seconds)

    def _spend(self, token: bytes, expires: int, now: int) -> None:
        self.spent.purge(now)
        if token in self.spent:
            raise PowSpent()
        if self.spent.full(None):
            raise RequestRejected(UNAVAILABLE, reason="pow_store_full")  # fail closed rather than forget what was spent
        self.spent.add(token, expires + 1, None)  # kept while it could still verify

    def commit(self, ask: Ask, device: bytes) -> Deferred[Lease | SealedRefusal]:
        try:
            return succeed(self._commit(ask, device))
        except RequestRejected as e:
            return fail(e)

    def _commit(self, ask: Ask, device: bytes) -> Lease | SealedRefusal:
        seconds = int(ask.now)
        budget = self.budgets[ask.relay]
        self.replay.remember(
            ask.request_id, ask.encapsulated_key, ask.timestamp, seconds, ask.address, budget.replay_entries
        )
        wait = self.per_device.check(device, ask.now)
        if wait:
            return SealedRefusal("rate_limited", DEVICE_LIMITED, retry_after=wait, reason="device_rate")
        if not self.address_streams.acquire(ask.address, budget.streams):
            return OVERLOADED
        if not self.slots.acquire(device):
            self.address_streams.release(ask.address)
            return OVERLOADED
        return Lease(os.urandom(LEASE_TOKEN_SIZE), ask.address, device)

    def release(self, lease: Lease) -> None:
        self.address_streams.release(lease.address)
        self.slots.release(lease.device)

    def load(self, now: float) -> Load:
        return Load(self.slots.active, self.rate.rate(now))

    def replay_entries(self, now: float) -> Deferred[int]:
        return succeed(self.replay.entries(int(now)))
