"""docs/protocol.md's worked example matches the code, and an independent HPKE agrees with it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.trial.unittest import TestCase

from ..protocol.keyset import KEYSET_CLOCK_SKEW, MAX_KEYSET_LIFETIME, StaleKeySet, verify_keyset
from . import rfc9180
from .example import INPUTS, worked_example

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "protocol.md")


def document() -> str:
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def documented() -> dict:
    text = document()
    block = text.split("<!-- worked-example:begin -->", 1)[1].split("<!-- worked-example:end -->", 1)[0]
    return json.loads(block.strip().removeprefix("```json").removesuffix("```"))


def b64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


class WorkedExample(TestCase):
    def setUp(self) -> None:
        self.doc = documented()
        self.out = self.doc["outputs"]
        self.text = document()

    def test_document_matches_code(self) -> None:
        self.assertEqual(self.doc, json.loads(json.dumps({"inputs": INPUTS, "outputs": worked_example()})))

    def test_keyset_signature_verifies(self) -> None:
        keyset = self.out["keyset"]
        Ed25519PublicKey.from_public_bytes(b64(keyset["signing_key"])).verify(
            b64(keyset["signature"]), self.out["keyset_signed_bytes"].encode()
        )

    def test_keyset_fresh_at_the_example_time_only(self) -> None:
        """The client rule of the key set section, on the example: fresh when the request is made,
        refused a clock skew after `expires` and a skew before `issued_at`."""
        raw = json.dumps(self.out["keyset"]).encode()
        pin = b64(self.out["keyset"]["signing_key"])
        self.assertEqual(verify_keyset(raw, pin, INPUTS["timestamp"]).expires, INPUTS["expires"])
        self.assertRaises(StaleKeySet, verify_keyset, raw, pin, INPUTS["expires"] + KEYSET_CLOCK_SKEW)
        self.assertRaises(StaleKeySet, verify_keyset, raw, pin, INPUTS["issued_at"] - KEYSET_CLOCK_SKEW - 1)
        self.assertIn(f"S = {KEYSET_CLOCK_SKEW} s", self.text)
        self.assertIn(f"`expires - issued_at > {MAX_KEYSET_LIFETIME}`", self.text)

    def test_independent_hpke_opens_request(self) -> None:
        request = self.out["request"]
        router_sk = bytes.fromhex(INPUTS["router_private_key"])
        ctx = rfc9180.setup_auth_receiver(
            b64(request["encapsulated_key"]), router_sk, b"privllm/v1 request", b64(request["device_pubkey"])
        )
        aad = f"privllm/v1|{request['key_id']}|{request['timestamp']}|{request['request_id']}".encode()
        self.assertEqual(b64(request["aad"]), aad)
        self.assertEqual(ctx.open(aad, b64(request["ciphertext"])).decode(), self.out["plaintext_bytes"])
        self.assertEqual(ctx.export(b"privllm/v1 response", 32).hex(), self.out["response_secret"])

    def test_independent_hpke_reproduces_sender(self) -> None:
        router_pk = rfc9180.public_key(bytes.fromhex(INPUTS["router_private_key"]))
        enc, ctx = rfc9180.setup_auth_sender(
            router_pk,
            b"privllm/v1 request",
            bytes.fromhex(INPUTS["device_private_key"]),
            bytes.fromhex(INPUTS["ephemeral_private_key"]),
        )
        request = self.out["request"]
        self.assertEqual(enc, b64(request["encapsulated_key"]))
        self.assertEqual(
            ctx.seal(b64(request["aad"]), self.out["plaintext_bytes"].encode()), b64(request["ciphertext"])
        )

    def test_independent_stream_keys_open_chunks(self) -> None:
        secret = bytes.fromhex(self.out["response_secret"])
        salt = b64(self.out["request"]["encapsulated_key"]) + b64(self.out["init_event"]["response_nonce"])
        prk = hmac.new(salt, secret, hashlib.sha256).digest()
        key = hmac.new(prk, b"key\x01", hashlib.sha256).digest()
        nonce = hmac.new(prk, b"nonce\x01", hashlib.sha256).digest()[:12]
        self.assertEqual(key.hex(), self.out["response_key"])
        self.assertEqual(nonce.hex(), self.out["response_nonce_base"])
        chunks = self.out["sealed_chunks"]
        opened = []
        for i, sealed in enumerate(chunks):
            n = bytes(a ^ b for a, b in zip(nonce, i.to_bytes(12, "big"), strict=True))
            aad = b"final" if i == len(chunks) - 1 else b""
            opened.append(json.loads(ChaCha20Poly1305(key).decrypt(n, b64(sealed), aad).rstrip(b"\x00")))
        self.assertEqual(opened, INPUTS["chunks"])
