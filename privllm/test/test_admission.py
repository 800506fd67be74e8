"""Every pre-decryption check, in order, on real sealed requests."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import TestCase

from ..protocol import suite
from ..protocol.encoding import b64encode
from ..protocol.errors import (
    DECRYPT_FAILED,
    MALFORMED,
    RATE_LIMITED,
    REPLAY,
    STALE,
    UNAVAILABLE,
    UNKNOWN_KEY,
    Rejection,
    RequestRejected,
)
from ..protocol.request import encapsulate, new_request_id, seal_request
from .helpers import NOW, current_key, memory_gate, ring, sealed_request, settled


class Admit(TestCase):
    def setUp(self) -> None:
        self.ring = ring()
        self.key = current_key(self.ring)
        self.admission = memory_gate(self.ring)

    def admit(self, body: dict[str, Any] | bytes, address: str = "a", ready: bool = True, now: float = NOW) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return settled(self.admission.admit(raw, address, now, ready))

    def rejection(self, *args: Any, **kw: Any) -> Rejection:
        with self.assertRaises(RequestRejected) as cm:
            self.admit(*args, **kw)
        return cm.exception.rejection

    def test_admits_and_opens(self) -> None:
        sealed = sealed_request(self.key, plaintext={"messages": [{"role": "user", "content": "secret"}]})
        admitted = self.admit(sealed.body)
        self.assertEqual(json.loads(admitted.opened.plaintext)["messages"][0]["content"], "secret")
        self.assertEqual(admitted.opened.response_secret, sealed.response_secret)

    def test_encapsulation_made_ahead(self) -> None:
        """A client may make the HPKE encapsulation before it knows the message; it opens the same."""
        device = os.urandom(32)
        ahead = encapsulate(self.key.public_key, device)
        sealed = seal_request(
            key_id=self.key.key_id,
            router_public_key=self.key.public_key,
            device_private_key=device,
            plaintext={"messages": [{"role": "user", "content": "later"}]},
            timestamp=int(NOW),
            request_id=new_request_id(),
            encapsulation=ahead,
        )
        self.assertEqual(sealed.encapsulated_key, ahead.encapsulated_key)
        admitted = self.admit(sealed.body)
        self.assertEqual(json.loads(admitted.opened.plaintext)["messages"][0]["content"], "later")
        self.assertEqual(admitted.opened.response_secret, sealed.response_secret)
        self.assertEqual(admitted.envelope.device_pubkey, suite.public_of(device))

    def test_encapsulation_for_another_key_refused(self) -> None:
        ahead = encapsulate(suite.public_of(os.urandom(32)), os.urandom(32))
        with self.assertRaises(ValueError):
            sealed_request(self.key, encapsulation=ahead)

    def test_replay(self) -> None:
        body = sealed_request(self.key).body
        self.admit(body)
        self.assertEqual(self.rejection(body), REPLAY)

    def test_forged_copy_does_not_burn_the_id(self) -> None:
        real = sealed_request(self.key)
        forged = dict(real.body, ciphertext=b64encode(os.urandom(40)))
        self.assertEqual(self.rejection(forged), DECRYPT_FAILED)
        self.admit(real.body)

    def test_stale(self) -> None:
        self.assertEqual(self.rejection(sealed_request(self.key, timestamp=NOW - 61).body), STALE)
        self.assertEqual(self.rejection(sealed_request(self.key, timestamp=NOW + 61).body), STALE)

    def test_unknown_key(self) -> None:
        body = sealed_request(self.key).body
        live = {k.key_id for k in self.ring.keys}
        body["key_id"] = next(i for i in range(256) if i not in live)
        self.assertEqual(self.rejection(body), UNKNOWN_KEY)

    def test_decrypt_failed(self) -> None:
        body = sealed_request(self.key).body
        body["aad"] = b64encode(b"privllm/v1|0|0|x")
        self.assertEqual(self.rejection(body), DECRYPT_FAILED)
        other_device = sealed_request(self.key).body
        body = dict(sealed_request(self.key).body, device_pubkey=other_device["device_pubkey"])
        self.assertEqual(self.rejection(body), DECRYPT_FAILED)
        low_order = dict(sealed_request(self.key).body, encapsulated_key=b64encode(bytes(32)))
        self.assertEqual(self.rejection(low_order), DECRYPT_FAILED)

    def test_malformed(self) -> None:
        self.assertEqual(self.rejection(b"nope"), MALFORMED)

    def test_unavailable_before_parsing(self) -> None:
        self.assertEqual(self.rejection(b"nope", ready=False), UNAVAILABLE)

    def test_rate_limited_first_with_retry_after(self) -> None:
        self.admission = memory_gate(self.ring, address_rate=1, address_burst=2)
        for _ in range(2):
            self.assertEqual(self.rejection(b"nope", "flood"), MALFORMED)
        with self.assertRaises(RequestRejected) as cm:
            self.admit(b"nope", "flood")
        self.assertEqual(cm.exception.rejection, RATE_LIMITED)
        self.assertEqual(cm.exception.retry_after, 1)
        self.admit(sealed_request(self.key).body, "other")
