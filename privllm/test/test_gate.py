"""The gate between admission and a state that answers later (as Redis does): what happens
while the answer is awaited, and when it is a failure."""

from __future__ import annotations

import json
import os

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import TestCase

from ..protocol.admission import Admission, Lease, PowGate, SealedRefusal
from ..protocol.errors import POW_REQUIRED, UNAVAILABLE, RequestRejected
from ..protocol.pow import Challenges, DifficultyPolicy
from ..protocol.v2.admission import AdmissionV2, AdmittedV2
from ..protocol.v2.keys import GatewayKeys, key_config
from ..protocol.v2.request import seal_chat_request
from ..state.gate import AdmissionGate
from ..state.interface import AdmissionState, PowSpent, StateUnavailable
from .fakes import LateState
from .helpers import NOW, current_key, ring, sealed_request

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


class Gate(TestCase):
    def setUp(self) -> None:
        self.ring = ring()
        self.state = LateState()
        state: AdmissionState = self.state
        pow_gate = PowGate(Challenges(b"s" * 32, 60), DifficultyPolicy(10, 10, 8, 2, 12))
        self.gate = AdmissionGate(Admission(self.ring, 65536, 60, 5, pow_gate), state)

    def admit(self, relay: bool = False) -> Deferred:
        body = json.dumps(sealed_request(current_key(self.ring)).body).encode()
        return self.gate.admit(body, "a", NOW, True, relay)

    def test_a_relays_request_asks_the_state_as_a_relays(self) -> None:
        """Screened and committed under the relay's budget; a refused one is counted under it too."""
        self.admit(relay=True)
        self.state.screens[0].callback(None)
        self.gate.admit(b"{}", "a", NOW, True, relay=True)
        self.admit()
        self.assertEqual([ask.relay for ask in self.state.screened], [True, True, False])
        self.assertIsNotNone(self.state.screened[1].refusal)
        self.assertEqual([ask.relay for ask in self.state.committed], [True])

    def refused(self, d: Deferred) -> RequestRejected:
        failure = self.failureResultOf(d, RequestRejected)
        assert isinstance(failure.value, RequestRejected)
        return failure.value

    def test_client_gone_while_the_lease_was_taken_gives_it_back(self) -> None:
        admitted = self.admit()
        self.state.screens[0].callback(None)
        admitted.cancel()  # the client left while the commit was under way
        self.failureResultOf(admitted, CancelledError)
        lease = Lease(b"t" * 16, "a", b"d")
        self.state.commits[0].callback(lease)
        self.assertEqual(self.state.released, [lease])

    def test_client_gone_before_the_screen_answered_opens_nothing(self) -> None:
        admitted = self.admit()
        admitted.cancel()
        self.failureResultOf(admitted, CancelledError)
        self.state.screens[0].callback(None)
        self.assertEqual(self.state.commits, [], "neither decrypted nor committed")

    def test_state_unavailable_is_503(self) -> None:
        admitted = self.admit()
        self.state.screens[0].errback(StateUnavailable("timeout"))
        self.assertEqual(self.refused(admitted).rejection, UNAVAILABLE)
        admitted = self.admit()
        self.state.screens[1].callback(None)
        self.state.commits[0].errback(StateUnavailable("timeout"))
        refused = self.refused(admitted)
        self.assertEqual((refused.rejection, refused.reason), (UNAVAILABLE, "state_unavailable"))

    def test_an_unexpected_failure_is_503_and_logged(self) -> None:
        admitted = self.admit()
        self.state.screens[0].errback(KeyError("a bug"))
        refused = self.refused(admitted)
        self.assertEqual((refused.rejection, refused.reason), (UNAVAILABLE, None), "a bug is no state outage")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_spent_work_asks_for_new_work(self) -> None:
        admitted = self.admit()
        self.state.screens[0].errback(PowSpent())
        refused = self.refused(admitted)
        self.assertEqual(refused.rejection, POW_REQUIRED)
        assert refused.body is not None
        self.assertEqual(refused.body["error"], "pow_required")
        self.assertIn("challenge", refused.body)

    def test_lease_and_sealed_refusal(self) -> None:
        admitted = self.admit()
        self.state.screens[0].callback(None)
        lease = Lease(b"t" * 16, "a", b"d")
        self.state.commits[0].callback(lease)
        result = self.successResultOf(admitted)
        self.assertEqual((result.lease, result.refusal), (lease, None))
        self.gate.release(result)
        self.assertEqual(self.state.released, [lease])
        admitted = self.admit()
        self.state.screens[1].callback(None)
        self.state.commits[1].callback(SealedRefusal("overloaded", "busy"))
        result = self.successResultOf(admitted)
        self.assertEqual((result.lease, result.refusal), (None, SealedRefusal("overloaded", "busy")))
        self.gate.release(result)
        self.assertEqual(self.state.released, [lease], "a refused request held nothing")


class GateV2(TestCase):
    """Protocol v2 through the same gate: the state's late answers, a stale request's lease."""

    def setUp(self) -> None:
        self.ring = ring()
        self.state = LateState()
        state: AdmissionState = self.state
        admission = Admission(self.ring, 65536, 60, 5)
        self.gate = AdmissionGate(admission, state, AdmissionV2(admission, GatewayKeys(self.ring).accepting))

    def admit(self, timestamp: int = NOW, relay: bool = False) -> Deferred[AdmittedV2]:
        key = current_key(self.ring)
        sealed = seal_chat_request(key_config(key.key_id, key.public_key), os.urandom(32), CHAT, timestamp)
        return self.gate.admit_v2(sealed.body, None, "a", NOW, True, relay)

    def test_a_relays_request_asks_the_state_as_a_relays(self) -> None:
        self.admit(relay=True)
        self.state.screens[0].callback(None)
        self.gate.admit_v2(b"garbage", None, "a", NOW, True, relay=True)
        self.admit()
        self.assertEqual([ask.relay for ask in self.state.screened], [True, True, False])
        self.assertIsNotNone(self.state.screened[1].refusal)
        self.assertEqual([ask.relay for ask in self.state.committed], [True])

    def test_client_gone_while_the_lease_was_taken_gives_it_back(self) -> None:
        d = self.admit()
        self.state.screens[0].callback(None)
        d.cancel()
        lease = Lease(b"t" * 16, "a", b"d" * 32)
        self.state.commits[0].callback(lease)
        self.assertEqual(self.state.released, [lease])
        self.failureResultOf(d, CancelledError)

    def test_stale_is_neither_remembered_nor_counted(self) -> None:
        """Committing it would charge its device for every copy replayed once the entry
        expired (a relay keeping captured requests could throttle any device)."""
        d = self.admit(NOW - 3600)
        self.state.screens[0].callback(None)
        admitted = self.successResultOf(d)
        self.assertTrue(admitted.stale)
        self.assertIsNone(admitted.lease)
        self.assertEqual((self.state.commits, self.state.committed, self.state.released), ([], [], []))

    def test_a_fresh_request_commits_its_own_timestamp(self) -> None:
        asks = self.state.committed
        d = self.admit(NOW - 30)
        self.state.screens[0].callback(None)
        lease = Lease(b"t" * 16, "a", b"d" * 32)
        self.state.commits[0].callback(lease)
        self.assertEqual(self.successResultOf(d).lease, lease)
        self.assertEqual(asks[0].timestamp, NOW - 30)
        self.assertEqual(self.state.released, [])

    def test_state_unavailable_is_503(self) -> None:
        d = self.admit()
        self.state.screens[0].errback(StateUnavailable())
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.rejection, UNAVAILABLE)  # type: ignore[union-attr]
