"""
docs/vectors/protocol-v1.json: made by the code (it cannot drift), opened and refused by code
written from docs/protocol.md that shares nothing with privllm.protocol, and by privllm's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ..client.api import PrivllmClient, ProofOfWorkRefused
from ..protocol import suite
from ..protocol.encoding import dumps
from ..protocol.envelope import parse_envelope
from ..protocol.errors import DECRYPT_FAILED, RequestRejected
from ..protocol.keyset import KeySetError, StaleKeySet, choose_key, verify_keyset
from ..protocol.pow import Challenges, PowError
from ..protocol.request import OpenedRequest, SealedRequest, open_request
from ..protocol.response import ResponseReader
from ..protocol.stream import StreamError, StreamKeys, StreamSealer
from . import rfc9180
from .vectors import PATH, render

KEYSET_SKEW = 60  # docs/protocol.md, "Freshness: the client rule"
KEYSET_MAX_LIFETIME = 86400
POW_CEILING = 24  # docs/protocol.md, "Proof of work under stress"


def load() -> dict[str, Any]:
    with open(PATH, encoding="utf-8") as f:
        return json.load(f)


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def hexb(text: str) -> bytes:
    return bytes.fromhex(text)


def negatives(vectors: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [n for n in vectors["negative"] if n["check"] == check]


# The independent side: each function follows docs/protocol.md and returns the refusal's name.


def doc_keyset(document: dict[str, Any], pin: bytes, now: int) -> str | None:
    doc = dict(document)
    signature = unb64(doc.pop("signature"))
    if unb64(doc["signing_key"]) != pin:
        return "wrong_pin"
    signed = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        Ed25519PublicKey.from_public_bytes(pin).verify(signature, signed)
    except InvalidSignature:
        return "bad_signature"
    if not doc["issued_at"] < doc["expires"] <= doc["issued_at"] + KEYSET_MAX_LIFETIME:
        return "malformed"
    if now + KEYSET_SKEW < doc["issued_at"]:
        return "not_yet_valid"
    if now >= doc["expires"] + KEYSET_SKEW:
        return "stale"
    return None


def doc_open_request(body: dict[str, Any], router_private: bytes) -> bytes | None:
    """The plaintext, or None where the router answers decrypt_failed."""
    aad = f"privllm/v1|{body['key_id']}|{body['timestamp']}|{body['request_id']}".encode()
    if not hmac.compare_digest(aad, unb64(body["aad"])):
        return None
    ctx = rfc9180.setup_auth_receiver(
        unb64(body["encapsulated_key"]), router_private, b"privllm/v1 request", unb64(body["device_pubkey"])
    )
    try:
        return ctx.open(aad, unb64(body["ciphertext"]))
    except InvalidTag:
        return None


def doc_stream_keys(secret: bytes, enc: bytes, response_nonce: bytes) -> tuple[bytes, bytes]:
    prk = hmac.new(enc + response_nonce, secret, hashlib.sha256).digest()
    key = hmac.new(prk, b"key\x01", hashlib.sha256).digest()
    return key, hmac.new(prk, b"nonce\x01", hashlib.sha256).digest()[:12]


def doc_events(body: str) -> list[tuple[str, str]]:
    """SSE as the router writes it: `event:` and `data:` lines, blank line ends, `:` comments."""
    events = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            events.append((fields["event"], fields["data"]))
    return events


def doc_read_stream(body: str, enc: bytes, secret: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """The reader rule: chunk i under nonce base XOR i, empty AAD then `final`; a final chunk is
    done or error and nothing follows it; no verified final chunk means truncated."""
    opened: list[dict[str, Any]] = []
    keys = None
    finished = False
    for i_event, (name, data) in enumerate(doc_events(body)):
        if name == "init":
            if i_event:
                return opened, "malformed"
            keys = doc_stream_keys(secret, enc, unb64(json.loads(data)["response_nonce"]))
            continue
        if keys is None:
            return opened, "malformed"
        if finished:
            return opened, "after_final"
        key, base = keys
        nonce = bytes(a ^ b for a, b in zip(base, len(opened).to_bytes(12, "big"), strict=True))
        try:
            plaintext, final = ChaCha20Poly1305(key).decrypt(nonce, unb64(data), b""), False
        except InvalidTag:
            try:
                plaintext, final = ChaCha20Poly1305(key).decrypt(nonce, unb64(data), b"final"), True
            except InvalidTag:
                return opened, "tampered"
        chunk = json.loads(plaintext.rstrip(b"\x00"))
        if final != (chunk["type"] in ("done", "error")):
            return opened, "malformed"
        opened.append(chunk)
        finished = final
    return opened, None if finished else "truncated"


def doc_pow(challenge: bytes, request_id: str, nonce: bytes, difficulty: int, now: int, expires: int) -> str | None:
    if now > expires:
        return "expired"
    digest = hashlib.sha256(challenge + request_id.encode() + nonce).digest()
    bits = len(digest) * 8 - int.from_bytes(digest, "big").bit_length()
    return None if bits >= difficulty else "too_weak"


class Regenerated(TestCase):
    def test_file_is_what_the_code_makes(self) -> None:
        """Run `python -m privllm.test.vectors` after changing the protocol code or the vectors."""
        with open(PATH, "rb") as f:
            self.assertEqual(f.read(), render())

    def test_every_negative_is_checked_here(self) -> None:
        checks = {n["check"] for n in load()["negative"]}
        self.assertEqual(checks, {"keyset", "request", "stream", "pow", "pow_required"})
        self.assertEqual(len({n["name"] for n in load()["negative"]}), len(load()["negative"]))

    def test_documented(self) -> None:
        """docs/protocol.md names the file, each check and each refusal the file expects."""
        doc = os.path.join(os.path.dirname(PATH), "..", "protocol.md")
        with open(doc, encoding="utf-8") as f:
            section = f.read().split("## Conformance vectors", 1)[1]
        self.assertIn("docs/vectors/protocol-v1.json", section.replace("](vectors/", "](docs/vectors/"))
        for case in load()["negative"]:
            self.assertIn(f"`{case['check']}`", section)
            self.assertIn(f"`{case['refused']}`", section)


class Independent(TestCase):
    """Only the document, rfc9180.py and cryptography's primitives: no privllm.protocol."""

    def setUp(self) -> None:
        self.v = load()
        self.request = self.v["request"]

    def test_keyset_signed_and_fresh(self) -> None:
        keyset = self.v["keyset"]
        pin = hexb(keyset["pin_hex"])
        self.assertEqual(pin, Ed25519PublicKey.from_public_bytes(pin).public_bytes_raw())
        document = dict(keyset["document"])
        self.assertEqual(unb64(document.pop("signature")), hexb(keyset["signature_hex"]))
        self.assertEqual(json.dumps(document, sort_keys=True, separators=(",", ":")), keyset["signed_text"])
        for now in keyset["fresh_at"]:
            self.assertIsNone(doc_keyset(keyset["document"], pin, now))
        for key, published in zip(keyset["keys"], keyset["document"]["keys"], strict=True):
            self.assertEqual(rfc9180.public_key(hexb(key["private_key_hex"])).hex(), key["public_key_hex"])
            self.assertEqual(unb64(published["public_key"]).hex(), key["public_key_hex"])
        now = self.request["timestamp"]
        usable = [k for k in keyset["keys"] if k["not_before"] <= now < k["not_after"]]
        usable.sort(key=lambda k: (k["status"] != "current", k["not_before"]))
        self.assertEqual(usable[0]["key_id"], keyset["chosen_key_id_at_timestamp"])

    def test_keyset_negatives_refused(self) -> None:
        for case in negatives(self.v, "keyset"):
            self.assertEqual(doc_keyset(case["document"], hexb(case["pin_hex"]), case["now"]), case["refused"], case)

    def test_request_sealed_as_documented(self) -> None:
        r = self.request
        router_public = hexb(r["router_public_key_hex"])
        enc, ctx = rfc9180.setup_auth_sender(
            router_public,
            r["info_text"].encode(),
            hexb(r["device_private_key_hex"]),
            hexb(r["ephemeral_private_key_hex"]),
        )
        body = r["body"]
        self.assertEqual(enc.hex(), r["enc_hex"])
        self.assertEqual(unb64(body["encapsulated_key"]), enc)
        self.assertEqual(unb64(body["device_pubkey"]).hex(), r["device_public_key_hex"])
        self.assertEqual(rfc9180.public_key(hexb(r["device_private_key_hex"])).hex(), r["device_public_key_hex"])
        self.assertEqual(unb64(body["aad"]).decode(), r["aad_text"])
        self.assertEqual(r["aad_text"], f"privllm/v1|{r['key_id']}|{r['timestamp']}|{r['request_id']}")
        self.assertEqual((body["v"], body["key_id"], body["timestamp"]), (1, r["key_id"], r["timestamp"]))
        self.assertEqual(body["request_id"], r["request_id"])
        ciphertext = ctx.seal(r["aad_text"].encode(), r["plaintext_text"].encode())
        self.assertEqual(ciphertext.hex(), r["ciphertext_hex"])
        self.assertEqual(unb64(body["ciphertext"]), ciphertext)
        self.assertEqual(ctx.export(r["export_label_text"].encode(), 32).hex(), r["response_secret_hex"])
        # DHKEM(X25519) Encap with the sender's key (RFC 9180 section 4.1, AuthEncap).
        ephemeral = X25519PrivateKey.from_private_bytes(hexb(r["ephemeral_private_key_hex"]))
        device = X25519PrivateKey.from_private_bytes(hexb(r["device_private_key_hex"]))
        peer = X25519PublicKey.from_public_bytes(router_public)
        prk = rfc9180.labeled_extract(
            b"", b"eae_prk", ephemeral.exchange(peer) + device.exchange(peer), rfc9180.KEM_SUITE_ID
        )
        kem_context = enc + router_public + hexb(r["device_public_key_hex"])
        shared = rfc9180.labeled_expand(prk, b"shared_secret", kem_context, 32, rfc9180.KEM_SUITE_ID)
        self.assertEqual(shared.hex(), r["shared_secret_hex"])

    def test_request_opens(self) -> None:
        r = self.request
        plaintext = doc_open_request(r["body"], hexb(r["router_private_key_hex"]))
        self.assertEqual(plaintext, r["plaintext_text"].encode())
        self.assertEqual(json.loads(plaintext or b"")["messages"][-1]["role"], "user")

    def test_request_negatives_refused(self) -> None:
        for case in negatives(self.v, "request"):
            self.assertEqual(case["refused"], "decrypt_failed")
            self.assertIsNone(doc_open_request(case["body"], hexb(case["router_private_key_hex"])), case["name"])

    def test_streams_open(self) -> None:
        enc, secret = hexb(self.request["enc_hex"]), hexb(self.request["response_secret_hex"])
        for stream in self.v["streams"]:
            nonce = hexb(stream["response_nonce_hex"])
            self.assertEqual(unb64(stream["init"]["response_nonce"]), nonce)
            key, base = doc_stream_keys(secret, enc, nonce)
            self.assertEqual((key.hex(), base.hex()), (stream["key_hex"], stream["nonce_base_hex"]))
            chunks = stream["chunks"]
            for i, chunk in enumerate(chunks):
                padded = hexb(chunk["padded_plaintext_hex"])
                plaintext = chunk["plaintext_text"].encode()
                self.assertEqual(padded.rstrip(b"\x00"), plaintext)
                self.assertEqual(len(padded) % stream["pad_to"], 0)
                self.assertLess(len(padded) - len(plaintext), stream["pad_to"])
                n = int.from_bytes(base, "big") ^ i
                self.assertEqual(chunk["nonce_hex"], n.to_bytes(12, "big").hex())
                self.assertEqual(chunk["final"], i == len(chunks) - 1)
                self.assertEqual(chunk["aad_text"], "final" if chunk["final"] else "")
                sealed = ChaCha20Poly1305(key).encrypt(hexb(chunk["nonce_hex"]), padded, chunk["aad_text"].encode())
                self.assertEqual(base64.b64encode(sealed).decode(), chunk["sealed_b64"])
            self.assertEqual(
                doc_events(stream["sse_text"])[0], ("init", json.dumps(stream["init"], separators=(",", ":")))
            )
            self.assertIn("\n: keepalive\n", stream["sse_text"])
            self.assertEqual(doc_read_stream(stream["sse_text"], enc, secret), (stream["opened"], None))
            self.assertEqual([json.loads(c["plaintext_text"]) for c in chunks], stream["opened"])

    def test_stream_negatives_refused(self) -> None:
        enc, secret = hexb(self.request["enc_hex"]), hexb(self.request["response_secret_hex"])
        answer = self.v["streams"][0]["opened"]
        for case in negatives(self.v, "stream"):
            opened, refused = doc_read_stream(case["sse_text"], enc, secret)
            self.assertEqual(refused, case["refused"], case["name"])
            self.assertEqual(opened, answer[: case["opened_before"]], case["name"])

    def test_pow_solution(self) -> None:
        p = self.v["pow"]
        challenge = hexb(p["challenge_hex"])
        self.assertEqual(len(challenge), 42)
        self.assertEqual(unb64(p["required"]["challenge"]), challenge)
        self.assertEqual(unb64(p["pow"]["challenge"]), challenge)
        self.assertEqual(unb64(p["pow"]["nonce"]).hex(), p["nonce_hex"])
        self.assertEqual(p["required"]["difficulty"], p["difficulty"])
        self.assertEqual(p["request_id"], self.request["request_id"])
        digest = hashlib.sha256(challenge + p["request_id"].encode() + hexb(p["nonce_hex"])).digest()
        self.assertEqual(digest.hex(), p["work_hash_hex"])
        self.assertEqual(256 - int.from_bytes(digest, "big").bit_length(), p["leading_zero_bits"])
        self.assertGreaterEqual(p["leading_zero_bits"], p["difficulty"])
        self.assertIsNone(
            doc_pow(
                challenge, p["request_id"], hexb(p["nonce_hex"]), p["difficulty"], p["now"], p["required"]["expires"]
            )
        )

    def test_pow_negatives_refused(self) -> None:
        p = self.v["pow"]
        for case in negatives(self.v, "pow"):
            refused = doc_pow(
                unb64(case["pow"]["challenge"]),
                case["request_id"],
                unb64(case["pow"]["nonce"]),
                p["difficulty"],
                case["now"],
                p["required"]["expires"],
            )
            self.assertEqual(refused, case["refused"], case["name"])
        for case in negatives(self.v, "pow_required"):
            self.assertEqual(case["refused"], "too_hard")
            self.assertGreater(case["required"]["difficulty"], POW_CEILING)


class RealCode(TestCase):
    """privllm.protocol (and the client) open the vectors and refuse the negatives."""

    def setUp(self) -> None:
        self.v = load()
        self.request = self.v["request"]

    def sealed(self) -> SealedRequest:
        r = self.request
        return SealedRequest(r["body"], hexb(r["enc_hex"]), hexb(r["response_secret_hex"]))

    def test_keyset(self) -> None:
        keyset = self.v["keyset"]
        raw = json.dumps(keyset["document"]).encode()
        for now in keyset["fresh_at"]:
            keys = verify_keyset(raw, hexb(keyset["pin_hex"]), now).keys
        self.assertEqual(choose_key(keys, self.request["timestamp"]).key_id, keyset["chosen_key_id_at_timestamp"])
        names = {
            "signed by a key other than the pinned identity": "wrong_pin",
            "bad signature": "bad_signature",
            "the key set has expired": "stale",
            "the key set is not valid yet (is this device's clock right?)": "not_yet_valid",
            "malformed key set": "malformed",
        }
        for case in negatives(self.v, "keyset"):
            with self.assertRaises(KeySetError) as raised:
                verify_keyset(json.dumps(case["document"]).encode(), hexb(case["pin_hex"]), case["now"])
            self.assertEqual(names[str(raised.exception)], case["refused"], case["name"])
            self.assertEqual(isinstance(raised.exception, StaleKeySet), case["refused"] in ("stale", "not_yet_valid"))

    def open(self, body: dict[str, Any], router_private: bytes) -> OpenedRequest:
        return open_request(parse_envelope(dumps(body), 1 << 16), suite.private_key(router_private))

    def test_request(self) -> None:
        r = self.request
        opened = self.open(r["body"], hexb(r["router_private_key_hex"]))
        self.assertEqual(opened.plaintext, r["plaintext_text"].encode())
        self.assertEqual(opened.response_secret.hex(), r["response_secret_hex"])
        for case in negatives(self.v, "request"):
            with self.assertRaises(RequestRejected) as raised:
                self.open(case["body"], hexb(case["router_private_key_hex"]))
            self.assertEqual(raised.exception.rejection, DECRYPT_FAILED, case["name"])

    def read(self, body: str, step: int) -> tuple[list[dict[str, Any]], str | None]:
        """Feed the body `step` bytes at a time, as a network might cut it."""
        reader = ResponseReader(self.sealed())
        opened: list[dict[str, Any]] = []
        raw = body.encode()
        try:
            for i in range(0, len(raw), step):
                opened += reader.feed(raw[i : i + step])
            reader.end()
        except StreamError as e:
            return opened, e.kind
        return opened, None

    def test_streams(self) -> None:
        for stream in self.v["streams"]:
            for step in (1, 7, len(stream["sse_text"].encode())):
                self.assertEqual(self.read(stream["sse_text"], step), (stream["opened"], None))
            sealer = StreamSealer(StreamKeys(hexb(stream["key_hex"]), hexb(stream["nonce_base_hex"])), stream["pad_to"])
            for chunk in stream["chunks"]:
                self.assertEqual(
                    sealer.seal_json(chunk["plaintext_text"].encode(), chunk["final"]), chunk["sealed_b64"]
                )
            self.assertEqual(self.sealed().stream_keys(hexb(stream["response_nonce_hex"])).key.hex(), stream["key_hex"])

    def test_stream_negatives(self) -> None:
        answer = self.v["streams"][0]["opened"]
        for case in negatives(self.v, "stream"):
            for step in (1, len(case["sse_text"].encode()) or 1):
                opened, refused = self.read(case["sse_text"], step)
                self.assertEqual(refused, case["refused"], case["name"])
                if step == 1:  # fed whole, the chunks before the refusal are lost with the feed call
                    self.assertEqual(opened, answer[: case["opened_before"]], case["name"])

    def test_pow(self) -> None:
        p = self.v["pow"]
        challenges = Challenges(hexb(p["router_secret_hex"]), p["ttl"])
        token, expires = challenges.verify(
            p["pow"]["challenge"], p["pow"]["nonce"], p["request_id"], p["now"], p["address"], p["difficulty"]
        )
        self.assertEqual((token.hex(), expires), (p["router_token_hex"], p["required"]["expires"]))
        names = {"too weak": "too_weak", "expired": "expired"}
        for case in negatives(self.v, "pow"):
            with self.assertRaises(PowError) as raised:
                challenges.verify(
                    case["pow"]["challenge"], case["pow"]["nonce"], case["request_id"], case["now"], p["address"]
                )
            self.assertEqual(names[str(raised.exception)], case["refused"], case["name"])

    def test_pow_too_hard_refused_by_the_client(self) -> None:
        client = PrivllmClient(Clock(), "https://127.0.0.1:1", hexb(self.v["keyset"]["pin_hex"]), b"\x01" * 32)
        for case in negatives(self.v, "pow_required"):
            d = Deferred.fromCoroutine(client._solve(case["required"], self.request["request_id"]))
            self.failureResultOf(d, ProofOfWorkRefused)
