from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from ..protocol.envelope import parse_envelope
from ..protocol.errors import MALFORMED, RequestRejected
from .helpers import current_key, ring, sealed_request


class ParseEnvelope(TestCase):
    def setUp(self) -> None:
        self.body: dict[str, Any] = sealed_request(current_key(ring())).body

    def parse(self, body: Any) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return parse_envelope(raw, max_ciphertext=4096)

    def assertMalformed(self, body: Any) -> None:
        with self.assertRaises(RequestRejected) as cm:
            self.parse(body)
        self.assertEqual(cm.exception.rejection, MALFORMED)

    def changed(self, **fields: Any) -> dict[str, Any]:
        return {**self.body, **fields}

    def test_valid(self) -> None:
        envelope = self.parse(self.body)
        self.assertEqual(envelope.request_id, self.body["request_id"])
        self.assertEqual(len(envelope.encapsulated_key), 32)

    def test_not_json(self) -> None:
        for raw in (b"", b"{", b"\xff\xfe", b"[]", b"null", b'"x"', b"{" * 100000):
            self.assertMalformed(raw)

    def test_nan_rejected(self) -> None:
        self.assertMalformed(json.dumps(self.body).replace('"timestamp": ', '"timestamp": NaN, "x": ').encode())

    def test_missing_and_unknown_fields(self) -> None:
        for name in self.body:
            self.assertMalformed({k: v for k, v in self.body.items() if k != name})
        self.assertMalformed(self.changed(extra=1))
        self.assertMalformed(self.changed(pow={"nonce": "x"}))
        self.assertMalformed(self.changed(pow={"nonce": "x", "challenge": 5}))
        self.assertMalformed(self.changed(pow="x"))
        self.assertEqual(self.parse(self.changed(pow={"challenge": "c", "nonce": "n"})).pow, ("c", "n"))

    def test_version(self) -> None:
        for v in (0, 2, "1", True, 1.0, None):
            self.assertMalformed(self.changed(v=v))

    def test_integers_are_strict(self) -> None:
        for key_id in (-1, 256, True, "7", 7.5, None):
            self.assertMalformed(self.changed(key_id=key_id))
        for ts in (-1, 2**41, False, "1", 1.5):
            self.assertMalformed(self.changed(timestamp=ts))

    def test_base64_strict(self) -> None:
        enc = self.body["encapsulated_key"]
        for bad in (
            enc.rstrip("="),
            enc + "=",
            "-" + enc[1:],
            "_" + enc[1:],
            "A" * 44,
            "!" * 44,
            5,
            None,
            enc[:-2] + "B=",
        ):
            self.assertMalformed(self.changed(encapsulated_key=bad))
        self.assertMalformed(self.changed(device_pubkey=self.body["device_pubkey"][:-4]))

    def test_ciphertext_size_bounded(self) -> None:
        self.assertMalformed(self.changed(ciphertext="A" * 8000))

    def test_request_id(self) -> None:
        for rid in ("short", "x" * 65, "a" * 21 + " ", "ü" * 30, "a" * 30 + "\n", 12345678901234567890123, None):
            self.assertMalformed(self.changed(request_id=rid))
        self.assertEqual(self.parse(self.changed(request_id="A_-" + "z" * 19)).request_id, "A_-" + "z" * 19)
