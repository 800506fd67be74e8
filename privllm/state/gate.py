"""
Admission's steps with the shared state asked in between: prepare, screen, open, commit;
for v1's envelope (`admit`) and v2's Oblivious HTTP request (`admit_v2`) alike.

The state may answer later (Redis) or at once (memory). The client may leave meanwhile: its
route's Deferred is then cancelled, but the state's answer is not, so whatever it granted
(a stream lease) is given back the moment it arrives rather than held until it expires.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..protocol.admission import Admission, Admitted, Ask, Lease, Prepared, SealedRefusal
from ..protocol.errors import UNAVAILABLE, RequestRejected
from ..protocol.v2.admission import AdmissionV2, AdmittedV2
from .interface import AdmissionState, PowSpent, StateUnavailable

__all__ = ["AdmissionGate"]

log = Logger()

_A = TypeVar("_A")


class AdmissionGate:
    def __init__(self, admission: Admission, state: AdmissionState, admission_v2: AdmissionV2 | None = None) -> None:
        self.admission = admission
        self.state = state
        self.admission_v2 = admission_v2

    def admit(
        self, body: bytes, address: str, now: float, backend_ready: bool, relay: bool = False
    ) -> Deferred[Admitted]:
        """Fires with the admitted request (perhaps with a sealed refusal), or fails with
        RequestRejected: the plaintext error to send. Unless refused, it holds a lease until
        `release`. `relay`: the peer is an Oblivious HTTP relay (its budget, not a client's)."""
        result: Deferred[Admitted] = Deferred()
        ask, prepared = self.admission.prepare(body, address, now, backend_ready, self.state.load(now), relay)
        screened = self.state.screen(ask)
        screened.addCallback(lambda _: self._open(result, ask, prepared))
        screened.addErrback(self._refuse, result, ask)
        return result

    def admit_v2(
        self,
        body: bytes,
        pow_header: Sequence[bytes] | None,
        address: str,
        now: float,
        backend_ready: bool,
        relay: bool = False,
    ) -> Deferred[AdmittedV2]:
        """As `admit`, for protocol v2. A stale request (known only once decrypted) is answered
        at once and, as v1's stale refusal, neither remembered nor counted: remembering it would
        charge its device for every copy someone replays once its entry expired, and a copy of
        a past request stays stale for ever."""
        assert self.admission_v2 is not None
        v2 = self.admission_v2
        result: Deferred[AdmittedV2] = Deferred()
        ask, prepared = v2.prepare(body, pow_header, address, now, backend_ready, self.state.load(now), relay)
        screened = self.state.screen(ask)

        def opened(_: None) -> None:
            if result.called:  # the client left
                return
            if prepared is None:
                raise ask.refusal or RequestRejected(UNAVAILABLE)
            request = v2.open(prepared)
            if not v2.fresh(request.timestamp, ask.now):
                result.callback(AdmittedV2(request, ask.address, stale=True))
                return

            def admitted(lease: Lease | None, refusal: SealedRefusal | None) -> AdmittedV2:
                return AdmittedV2(request, ask.address, refusal=refusal, lease=lease)

            self._commit(result, replace(ask, timestamp=request.timestamp), request.device_pubkey, admitted)

        screened.addCallback(opened)
        screened.addErrback(self._refuse, result, ask)
        return result

    def release(self, admitted: Admitted | AdmittedV2) -> None:
        """The admitted request's stream ended: give back its lease."""
        if admitted.lease is not None:
            self.state.release(admitted.lease)

    def _open(self, result: Deferred[Admitted], ask: Ask, prepared: Prepared | None) -> None:
        if result.called:  # the client left
            return
        if prepared is None:  # the state must refuse a request that carries a refusal
            raise ask.refusal or RequestRejected(UNAVAILABLE)
        opened = self.admission.open(prepared)

        def admitted(lease: Lease | None, refusal: SealedRefusal | None) -> Admitted:
            return Admitted(prepared.envelope, opened, ask.address, refusal=refusal, lease=lease)

        self._commit(result, ask, prepared.envelope.device_pubkey, admitted)

    def _commit(
        self,
        result: Deferred[_A],
        ask: Ask,
        device: bytes,
        admitted: Callable[[Lease | None, SealedRefusal | None], _A],
    ) -> None:
        """Remember the request, count its device, take a lease; fire `result` with what was
        granted."""

        def granted(held: Lease | SealedRefusal) -> None:
            lease = held if isinstance(held, Lease) else None
            if lease is not None and result.called:  # the client left meanwhile
                self.state.release(lease)
                lease = None
            if not result.called:
                result.callback(admitted(lease, None if isinstance(held, Lease) else held))

        committed = self.state.commit(ask, device)
        committed.addCallback(granted)
        committed.addErrback(self._refuse, result, ask)

    def _refuse(self, failure: Failure, result: Deferred[Any], ask: Ask) -> None:
        error: BaseException
        if failure.check(PowSpent) and self.admission.pow_gate is not None:
            error = self.admission.pow_gate.required(self.state.load(ask.now), ask.now, ask.address)
        elif failure.check(RequestRejected):
            error = cast(RequestRejected, failure.value)
        elif failure.check(StateUnavailable):
            error = RequestRejected(UNAVAILABLE, reason="state_unavailable")
        else:  # a bug: the outcome `unavailable` counts it, no control refused it
            log.failure("admission failed", failure)
            error = RequestRejected(UNAVAILABLE)
        if not result.called:
            result.errback(error)
