"""
Admission's steps with the shared state asked in between: prepare, screen, open, commit.

The state may answer later (Redis) or at once (memory). The client may leave meanwhile: its
route's Deferred is then cancelled, but the state's answer is not, so whatever it granted
(a stream lease) is given back the moment it arrives rather than held until it expires.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..protocol.admission import Admission, Admitted, Ask, Lease, Prepared, SealedRefusal
from ..protocol.errors import UNAVAILABLE, RequestRejected
from .interface import AdmissionState, PowSpent, StateUnavailable

__all__ = ["AdmissionGate"]

log = Logger()


class AdmissionGate:
    def __init__(self, admission: Admission, state: AdmissionState) -> None:
        self.admission = admission
        self.state = state

    def admit(self, body: bytes, address: str, now: float, backend_ready: bool) -> Deferred[Admitted]:
        """Fires with the admitted request (perhaps with a sealed refusal), or fails with
        RequestRejected: the plaintext error to send. Unless refused, it holds a lease until
        `release`."""
        result: Deferred[Admitted] = Deferred()
        ask, prepared = self.admission.prepare(body, address, now, backend_ready, self.state.load(now))
        screened = self.state.screen(ask)
        screened.addCallback(lambda _: self._open(result, ask, prepared))
        screened.addErrback(self._refuse, result, ask)
        return result

    def release(self, admitted: Admitted) -> None:
        """The admitted request's stream ended: give back its lease."""
        if admitted.lease is not None:
            self.state.release(admitted.lease)

    def _open(self, result: Deferred[Admitted], ask: Ask, prepared: Prepared | None) -> None:
        if result.called:  # the client left
            return
        if prepared is None:  # the state must refuse a request that carries a refusal
            raise ask.refusal or RequestRejected(UNAVAILABLE)
        opened = self.admission.open(prepared)
        device = prepared.envelope.device_pubkey

        def granted(held: Lease | SealedRefusal) -> None:
            if isinstance(held, Lease):
                if result.called:  # the client left while the lease was being taken
                    self.state.release(held)
                    return
                result.callback(Admitted(prepared.envelope, opened, ask.address, lease=held))
            elif not result.called:
                result.callback(Admitted(prepared.envelope, opened, ask.address, refusal=held))

        committed = self.state.commit(ask, device)
        committed.addCallback(granted)
        committed.addErrback(self._refuse, result, ask)

    def _refuse(self, failure: Failure, result: Deferred[Admitted], ask: Ask) -> None:
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
