"""
docs/vectors/protocol-v2.json: made by the code (it cannot drift), re-derived, opened and refused
by code written from docs/protocol.md that shares nothing with privllm.protocol (rfc9180.py,
`cryptography`, hmac, json, Binary HTTP read by hand), and by privllm's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from twisted.trial.unittest import TestCase

from ..protocol.keyset import StaleKeySet, check_fresh
from ..protocol.ohttp.errors import OhttpError
from ..protocol.ohttp.keyconfig import parse_key_configs
from ..protocol.ohttp.message import Context, GatewayKey
from ..protocol.pow import Challenges
from ..protocol.stream import StreamError
from ..protocol.v2.request import open_chat_request, peek, seal_chat_request
from ..protocol.v2.response import ResponseReader, ResponseStream
from . import rfc9180
from .vectors_v2 import PATH, config_of, kem_pair, render

KEYS_SKEW = 60  # docs/protocol.md, "Freshness: the client rule" (v2 keeps it)
KEYS_MAX_LIFETIME = 86400
REQUEST_INFO = b"message/bhttp request\x00"  # RFC 9458 section 4.3
RESPONSE_LABEL = b"message/bhttp chunked response"  # draft-ietf-ohai-chunked-ohttp-08
AEADS: dict[int, tuple[Any, int]] = {1: (AESGCM, 16), 3: (ChaCha20Poly1305, 32)}  # id: (cipher, Nk)


def load() -> dict[str, Any]:
    with open(PATH, encoding="utf-8") as f:
        return json.load(f)


def hexb(text: str) -> bytes:
    return bytes.fromhex(text)


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def negatives(vectors: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [n for n in vectors["negative"] if n["check"] == check]


# The independent side: each function follows docs/protocol.md and returns the refusal's name.


class Refused(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Cursor:
    """RFC 9000 varints and bytes; running off the end is `short`."""

    def __init__(self, data: bytes, short: str = "malformed") -> None:
        self.data, self.at, self.short = data, 0, short

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise Refused(self.short)
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def varint(self) -> int:
        first = self.take(1)[0]
        value = first & 0x3F
        for byte in self.take((1 << (first >> 6)) - 1):
            value = value << 8 | byte
        return value

    def vbytes(self) -> bytes:
        return self.take(self.varint())

    @property
    def left(self) -> int:
        return len(self.data) - self.at


def doc_key_configs(body: bytes) -> list[tuple[int, int, bytes, list[tuple[int, int]]]]:
    """`application/ohttp-keys` (RFC 9458 section 3.2): (key id, KEM, public key, suites) each."""
    out, c = [], Cursor(body)
    while c.left:
        one = Cursor(c.take(int.from_bytes(c.take(2), "big")))
        key_id, kem = one.take(1)[0], int.from_bytes(one.take(2), "big")
        public = one.take(32)
        suites_bytes = one.take(int.from_bytes(one.take(2), "big"))
        suites = [
            (int.from_bytes(suites_bytes[i : i + 2], "big"), int.from_bytes(suites_bytes[i + 2 : i + 4], "big"))
            for i in range(0, len(suites_bytes), 4)
        ]
        if one.left:
            raise Refused("malformed")
        out.append((key_id, kem, public, suites))
    return out


def doc_check_keys(body: bytes, headers: dict[str, str], pin: bytes, now: int) -> str | None:
    if unb64(headers["Privllm-Keys-Signing-Key"]) != pin:
        return "wrong_pin"
    issued, expires = int(headers["Privllm-Keys-Issued"]), int(headers["Privllm-Keys-Expires"])
    signed = b"privllm/v2 ohttp-keys\x00" + issued.to_bytes(8, "big") + expires.to_bytes(8, "big") + body
    try:
        Ed25519PublicKey.from_public_bytes(pin).verify(unb64(headers["Privllm-Keys-Signature"]), signed)
    except InvalidSignature:
        return "bad_signature"
    if not issued < expires <= issued + KEYS_MAX_LIFETIME:
        return "malformed"
    if now + KEYS_SKEW < issued:
        return "not_yet_valid"
    if now >= expires + KEYS_SKEW:
        return "stale"
    return None


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block = b"", b""
    for counter in range(1, 1 + (length + 31) // 32):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


def doc_proof(shared: bytes, device_public: bytes, router_public: bytes, enc: bytes, timestamp: int) -> bytes:
    prk = hmac.new(bytes(32), shared, hashlib.sha256).digest()
    key = hkdf_expand(prk, b"privllm/v2 device key" + device_public + router_public, 32)
    message = b"privllm/v2 device proof\x00" + enc + timestamp.to_bytes(8, "big")
    return hmac.new(key, message, hashlib.sha256).digest()


def doc_bhttp_request(data: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]], bytes]:
    """Known-length Binary HTTP (RFC 9292): control data, header fields, content; trailers empty
    or truncated away."""
    c = Cursor(data)
    if c.varint() != 0:
        raise Refused("malformed")
    control = [c.vbytes() for _ in range(4)]
    section = Cursor(c.vbytes())
    fields = []
    while section.left:
        fields.append((section.vbytes(), section.vbytes()))
    content = c.vbytes()
    if c.left and (c.varint() != 0 or c.left):
        raise Refused("malformed")
    return control, fields, content


def doc_open_request(data: bytes, privates: dict[int, bytes]) -> dict[str, Any]:
    """The request's JSON, or Refused(unknown_key | decrypt_failed | malformed)."""
    header, enc, ciphertext = data[:7], data[7:39], data[39:]
    key_id, kem, kdf, aead = header[0], *(int.from_bytes(header[i : i + 2], "big") for i in (1, 3, 5))
    if key_id not in privates or (kem, kdf) != (0x0020, 0x0001) or aead not in AEADS:
        raise Refused("unknown_key")
    private = privates[key_id]
    try:
        plaintext = rfc9180.setup_base_receiver(enc, private, REQUEST_INFO + header, aead).open(b"", ciphertext)
    except (InvalidTag, ValueError) as e:
        raise Refused("decrypt_failed") from e
    control, fields, content = doc_bhttp_request(plaintext)
    if control[:2] + control[3:] != [b"POST", b"https", b"/api/chat"] or fields != [
        (b"content-type", b"application/json")
    ]:
        raise Refused("malformed")
    body = json.loads(content)
    if set(body) != {"v", "timestamp", "device_pubkey", "proof", "chat"} or body["v"] != 2:
        raise Refused("malformed")
    device_public = unb64(body["device_pubkey"])
    router = X25519PrivateKey.from_private_bytes(private)
    try:
        shared = router.exchange(X25519PublicKey.from_public_bytes(device_public))
    except ValueError as e:  # an all-zero secret: a device key of small order
        raise Refused("decrypt_failed") from e
    router_public = router.public_key().public_bytes_raw()
    expected = doc_proof(shared, device_public, router_public, enc, body["timestamp"])
    if not hmac.compare_digest(expected, unb64(body["proof"])):
        raise Refused("decrypt_failed")
    return body


def doc_response_key(secret: bytes, enc: bytes, nonce: bytes, aead: int) -> tuple[bytes, bytes]:
    """RFC 9458 section 4.4 with the chunked draft's label: (key, nonce base)."""
    prk = hmac.new(enc + nonce, secret, hashlib.sha256).digest()
    return hkdf_expand(prk, b"key", AEADS[aead][1]), hkdf_expand(prk, b"nonce", 12)


def doc_chunks(body: bytes, enc: bytes, secret: bytes, aead: int) -> Any:
    """Yield (plaintext, final) per chunk; Refused(truncated | tampered) where reading stops."""
    size = max(AEADS[aead][1], 12)
    if len(body) < size:
        raise Refused("truncated")
    key, base = doc_response_key(secret, enc, body[:size], aead)
    cipher = AEADS[aead][0](key)
    c, index = Cursor(body[size:], short="truncated"), 0
    while True:
        length = c.varint()
        final = length == 0
        sealed = c.take(c.left) if final else c.take(length)
        nonce = (int.from_bytes(base, "big") ^ index).to_bytes(12, "big")
        try:
            yield cipher.decrypt(nonce, sealed, b"final" if final else b""), final
        except InvalidTag as e:
            raise Refused("tampered") from e
        if final:
            return
        index += 1


def doc_event(line: bytes) -> dict[str, Any]:
    event = json.loads(line)
    kind = event.get("type") if isinstance(event, dict) else None
    if (kind, type(event.get("text"))) != ("delta", str) and kind not in ("done", "error"):
        raise Refused("malformed")
    return event


class DocAnswer:
    """An answer read by the rules of docs/protocol.md: a streamed BHTTP response (framing 3)
    whose content is padded JSON lines; the last event (done or error) alone in the final chunk."""

    def __init__(self) -> None:
        self.state, self.status, self.line = "head", 0, b""
        self.date: str | None = None
        self.events: list[dict[str, Any]] = []
        self.finished = False

    def chunk(self, plaintext: bytes, final: bool) -> None:
        c, events = Cursor(plaintext, short="truncated" if final else "malformed"), []
        while c.left:
            if self.state == "head":
                self.head(c)
            elif self.state == "content":
                data = c.vbytes()
                self.state = "content" if data else "trailers"
                events += self.lines(data)
            elif self.state == "trailers":
                self.state = "done" if c.varint() == 0 else "bad"
            else:
                raise Refused("malformed")
        if final and self.state != "done":
            raise Refused("truncated")
        if final and (self.line.strip(b"\x00") or len(events) != 1 or not self.finished):
            raise Refused("malformed")
        if not final and self.finished:
            raise Refused("malformed")
        self.events += events

    def head(self, c: Cursor) -> None:
        if c.varint() != 3:
            raise Refused("malformed")
        self.status = c.varint()
        fields = {}
        while name := c.vbytes():
            fields[name] = c.vbytes()
        if fields.get(b"content-type") != b"application/privllm-events" or set(fields) - {b"content-type", b"date"}:
            raise Refused("malformed")
        if b"date" in fields:
            self.date = fields[b"date"].decode()
        self.state = "content"

    def lines(self, data: bytes) -> list[dict[str, Any]]:
        self.line += data
        out = []
        while b"\n" in self.line:
            line, self.line = self.line.split(b"\n", 1)
            if self.finished:
                raise Refused("after_final")
            event = doc_event(line.lstrip(b"\x00"))
            self.finished = event["type"] in ("done", "error")
            if self.status != 200 and event["type"] != "error":
                raise Refused("malformed")
            out.append(event)
        return out


def doc_read_answer(body: bytes, enc: bytes, secret: bytes, aead: int) -> tuple[DocAnswer, str | None]:
    answer = DocAnswer()
    try:
        for plaintext, final in doc_chunks(body, enc, secret, aead):
            answer.chunk(plaintext, final)
    except Refused as e:
        return answer, e.name
    return answer, None


def doc_pow(challenge: bytes, enc: bytes, nonce: bytes, difficulty: int, now: int, expires: int) -> str | None:
    if now > expires:
        return "expired"
    digest = hashlib.sha256(challenge + enc + nonce).digest()
    return None if 256 - int.from_bytes(digest, "big").bit_length() >= difficulty else "too_weak"


class Regenerated(TestCase):
    def test_file_is_what_the_code_makes(self) -> None:
        """Run `python -m privllm.test.vectors_v2` after changing the protocol code or the vectors."""
        with open(PATH, "rb") as f:
            self.assertEqual(f.read(), render())

    def test_every_negative_is_checked_here(self) -> None:
        checks = {n["check"] for n in load()["negative"]}
        self.assertEqual(checks, {"key_configs", "request", "response", "pow"})
        self.assertEqual(len({n["name"] for n in load()["negative"]}), len(load()["negative"]))

    def test_documented(self) -> None:
        """docs/protocol.md names the file, each check and each refusal the file expects."""
        doc = os.path.join(os.path.dirname(PATH), "..", "protocol.md")
        with open(doc, encoding="utf-8") as f:
            section = f.read().split("\n## Conformance vectors (v2)\n", 1)[1].split("\n# ", 1)[0]
        self.assertIn("vectors/protocol-v2.json", section)
        for case in load()["negative"]:
            self.assertIn(f"`{case['check']}`", section)
            self.assertIn(f"`{case['refused']}`", section)


class Independent(TestCase):
    """Only the document, rfc9180.py and cryptography's primitives: no privllm.protocol."""

    def setUp(self) -> None:
        self.v = load()
        self.keys = self.v["key_configs"]
        self.privates = {k["key_id"]: hexb(k["private_key_hex"]) for k in self.keys["keys"]}
        self.request = self.v["requests"][0]

    def test_key_configs_signed_and_fresh(self) -> None:
        k = self.keys
        body, pin = hexb(k["body_hex"]), hexb(k["pin_hex"])
        self.assertEqual(
            Ed25519PrivateKey.from_private_bytes(hexb(k["identity_seed_hex"])).public_key().public_bytes_raw(), pin
        )
        parsed = doc_key_configs(body)
        self.assertEqual(b"".join(hexb(key["key_config_hex"]) for key in k["keys"]), body.replace(b"\x00\x2d", b""))
        for key, (key_id, kem, public, suites) in zip(k["keys"], parsed, strict=True):
            self.assertEqual((key_id, kem, public.hex()), (key["key_id"], 0x0020, key["public_key_hex"]))
            self.assertEqual(rfc9180.public_key(hexb(key["private_key_hex"])), public)
            self.assertEqual(suites, [(1, 3), (1, 1)])  # ChaCha20-Poly1305 first, then AES-128-GCM
        headers = k["headers"]
        self.assertEqual(
            (headers["Content-Type"], headers["Cache-Control"]), ("application/ohttp-keys", "public, max-age=300")
        )
        signed = b"privllm/v2 ohttp-keys\x00" + k["issued"].to_bytes(8, "big") + k["expires"].to_bytes(8, "big") + body
        self.assertEqual(signed.hex(), k["signed_hex"])
        self.assertEqual(unb64(headers["Privllm-Keys-Signature"]).hex(), k["signature_hex"])
        for now in k["fresh_at"]:
            self.assertIsNone(doc_check_keys(body, headers, pin, now))

    def test_key_configs_negatives_refused(self) -> None:
        for case in negatives(self.v, "key_configs"):
            refused = doc_check_keys(hexb(case["body_hex"]), case["headers"], hexb(case["pin_hex"]), case["now"])
            self.assertEqual(refused, case["refused"], case["name"])

    def test_requests_sealed_as_documented(self) -> None:
        for r in self.v["requests"]:
            aead = r["suite"][1]
            header = hexb(r["header_hex"])
            self.assertEqual(header, bytes([r["key_id"]]) + bytes.fromhex("00200001") + aead.to_bytes(2, "big"))
            self.assertEqual(hexb(r["info_hex"]), REQUEST_INFO + header)
            enc, sender = rfc9180.setup_base_sender(
                hexb(r["router_public_key_hex"]), REQUEST_INFO + header, hexb(r["ephemeral_private_key_hex"]), aead
            )
            self.assertEqual(enc.hex(), r["enc_hex"])
            # the device proof: X25519(device, router), HKDF, HMAC over the label, enc and the time
            device = X25519PrivateKey.from_private_bytes(hexb(r["device_private_key_hex"]))
            shared = device.exchange(X25519PublicKey.from_public_bytes(hexb(r["router_public_key_hex"])))
            proof = doc_proof(
                shared, hexb(r["device_public_key_hex"]), hexb(r["router_public_key_hex"]), enc, r["timestamp"]
            )
            self.assertEqual(proof.hex(), r["proof_hex"])
            self.assertEqual(
                hexb(r["proof_message_hex"]), b"privllm/v2 device proof\x00" + enc + r["timestamp"].to_bytes(8, "big")
            )
            content = json.loads(r["content_text"])
            self.assertEqual(
                content,
                {
                    "v": 2,
                    "timestamp": r["timestamp"],
                    "device_pubkey": base64.b64encode(hexb(r["device_public_key_hex"])).decode(),
                    "proof": base64.b64encode(proof).decode(),
                    "chat": r["chat"],
                },
            )
            # Known-length Binary HTTP written by hand: framing 0, the request line, one field, content
            section = b"\x0ccontent-type\x10application/json"
            raw = r["content_text"].encode()
            bhttp = b"\x00\x04POST\x05https\x07privllm\x09/api/chat" + bytes([len(section)]) + section
            bhttp += (0x4000 | len(raw)).to_bytes(2, "big") + raw
            self.assertEqual(r["bhttp_request_hex"], bhttp.hex())
            ciphertext = sender.seal(b"", bhttp)
            self.assertEqual(ciphertext.hex(), r["ciphertext_hex"])
            self.assertEqual(r["encapsulated_request_hex"], (header + enc + ciphertext).hex())
            self.assertEqual(sender.export(RESPONSE_LABEL, max(AEADS[aead][1], 12)).hex(), r["response_secret_hex"])

    def test_requests_open(self) -> None:
        for r in self.v["requests"]:
            body = doc_open_request(hexb(r["encapsulated_request_hex"]), self.privates)
            self.assertEqual(body["chat"], r["chat"])

    def test_request_negatives_refused(self) -> None:
        for case in negatives(self.v, "request"):
            with self.assertRaises(Refused, msg=case["name"]) as cm:
                doc_open_request(hexb(case["encapsulated_request_hex"]), self.privates)
            self.assertEqual(cm.exception.name, case["refused"], case["name"])

    def check_answer(self, vector: dict[str, Any]) -> DocAnswer:
        r = self.request
        enc, secret, aead = hexb(r["enc_hex"]), hexb(r["response_secret_hex"]), r["suite"][1]
        nonce = hexb(vector["response_nonce_hex"])
        key, base = doc_response_key(secret, enc, nonce, aead)
        self.assertEqual((key.hex(), base.hex()), (vector["key_hex"], vector["nonce_base_hex"]))
        wire = nonce
        for i, chunk in enumerate(vector["chunks"]):
            self.assertEqual(chunk["nonce_hex"], (int.from_bytes(base, "big") ^ i).to_bytes(12, "big").hex())
            self.assertEqual(chunk["final"], i == len(vector["chunks"]) - 1)
            self.assertEqual(chunk["aad_text"], "final" if chunk["final"] else "")
            sealed = ChaCha20Poly1305(key).encrypt(
                hexb(chunk["nonce_hex"]), hexb(chunk["plaintext_hex"]), chunk["aad_text"].encode()
            )
            self.assertEqual(sealed.hex(), chunk["sealed_hex"])
            length = b"\x00" if chunk["final"] else encode_length(len(sealed))
            self.assertEqual((length + sealed).hex(), chunk["wire_hex"])
            wire += length + sealed
        self.assertEqual(wire.hex(), vector["body_hex"])
        answer, refused = doc_read_answer(wire, enc, secret, aead)
        self.assertIsNone(refused)
        reader = vector["reader"]
        self.assertEqual((answer.status, answer.events), (reader["status"], reader["events"]))
        return answer

    def test_answer_opens(self) -> None:
        vector = self.v["response"]
        self.check_answer(vector)
        pad = vector["pad_to"]
        for chunk in vector["chunks"][1:]:
            c = Cursor(hexb(chunk["plaintext_hex"]))
            content = c.vbytes()
            self.assertEqual(len(content) % pad, 0)  # each event's line padded
            if chunk["what"] == "keepalive":
                self.assertEqual(content, bytes(pad))
            else:
                line = chunk["line_text"].encode()
                self.assertEqual(json.loads(line), chunk["event"])
                self.assertEqual(content.rstrip(b"\x00"), line)
                self.assertLess(len(content) - len(line), pad)
            self.assertEqual(c.data[c.at :], b"\x00\x00" if chunk["final"] else b"")  # the BHTTP end
        head = hexb(vector["chunks"][0]["plaintext_hex"])
        self.assertEqual(head, b"\x03\x40\xc8\x0ccontent-type\x1aapplication/privllm-events\x00")

    def test_stale_refusal(self) -> None:
        vector = self.v["stale_refusal"]
        answer = self.check_answer(vector)
        self.assertEqual(len(vector["chunks"]), 1)
        self.assertEqual((answer.status, answer.date), (401, vector["date_text"]))
        self.assertEqual(answer.events[0]["code"], "stale")
        self.assertGreater(vector["router_now"], self.request["timestamp"] + vector["window"])
        self.assertEqual(vector["reader"]["date"], vector["router_now"])
        self.assertEqual(vector["date_text"], "Thu, 01 Jan 2026 01:01:31 GMT")
        self.assertEqual(vector["clock_offset"], vector["router_now"] - self.request["timestamp"])

    def test_response_negatives_refused(self) -> None:
        r = self.request
        for case in negatives(self.v, "response"):
            answer, refused = doc_read_answer(
                hexb(case["body_hex"]), hexb(r["enc_hex"]), hexb(r["response_secret_hex"]), 3
            )
            self.assertEqual((refused, answer.events), (case["refused"], case["opened"]), case["name"])

    def test_pow(self) -> None:
        p = self.v["pow"]
        challenge = hexb(p["challenge_hex"])
        self.assertEqual(p["enc_hex"], self.request["enc_hex"])
        self.assertEqual(len(challenge), 42)
        challenge_b64, nonce_b64 = p["header_text"].split(".")
        self.assertEqual((unb64(challenge_b64), unb64(nonce_b64).hex()), (challenge, p["nonce_hex"]))
        digest = hashlib.sha256(challenge + hexb(p["enc_hex"]) + hexb(p["nonce_hex"])).digest()
        self.assertEqual(digest.hex(), p["work_hash_hex"])
        self.assertIsNone(
            doc_pow(
                challenge, hexb(p["enc_hex"]), hexb(p["nonce_hex"]), p["difficulty"], p["now"], p["required"]["expires"]
            )
        )
        for case in negatives(self.v, "pow"):
            c, n = (unb64(x) for x in case["header_text"].split("."))
            refused = doc_pow(c, hexb(case["enc_hex"]), n, p["difficulty"], case["now"], p["required"]["expires"])
            self.assertEqual(refused, case["refused"], case["name"])


def encode_length(n: int) -> bytes:
    """RFC 9000 varint, written out again."""
    for size, prefix in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if n < 1 << (8 * size - 2):
            return (prefix << (8 * size - 8) | n).to_bytes(size, "big")
    raise ValueError(n)


class RealCode(TestCase):
    """privllm.protocol re-derives the vectors, opens them and refuses the negatives."""

    def setUp(self) -> None:
        self.v = load()
        self.keys = {
            k["key_id"]: GatewayKey(config_of(k["key_id"]), kem_pair(hexb(k["private_key_hex"])).private_key)
            for k in self.v["key_configs"]["keys"]
        }

    def client_context(self, r: dict[str, Any]) -> Context:
        """The request sealed again from the vector's inputs: the same bytes, and its context."""
        config = next(c for c in parse_key_configs(hexb(self.v["key_configs"]["body_hex"])) if c.key_id == r["key_id"])
        suite = next(s for s in config.suites if [s.kdf_id, s.aead_id] == r["suite"])
        chat = json.loads(r["content_text"])["chat"]  # in the order sealed (the file's keys are sorted)
        sealed = seal_chat_request(
            config,
            hexb(r["device_private_key_hex"]),
            chat,
            r["timestamp"],
            kem_pair(hexb(r["ephemeral_private_key_hex"])),
            suite=suite,
        )
        self.assertEqual(sealed.body.hex(), r["encapsulated_request_hex"])
        return sealed.context

    def test_key_configs(self) -> None:
        k = self.v["key_configs"]
        configs = parse_key_configs(hexb(k["body_hex"]))
        self.assertEqual([c.key_id for c in configs], [key["key_id"] for key in k["keys"]])
        self.assertEqual([c.public_key.hex() for c in configs], [key["public_key_hex"] for key in k["keys"]])
        for now in k["fresh_at"]:
            check_fresh(k["issued"], k["expires"], now)
        for case in negatives(self.v, "key_configs"):
            if case["refused"] in ("stale", "not_yet_valid"):
                self.assertRaises(StaleKeySet, check_fresh, k["issued"], k["expires"], case["now"])

    def test_requests(self) -> None:
        for r in self.v["requests"]:
            self.client_context(r)
            body = hexb(r["encapsulated_request_hex"])
            self.assertEqual((peek(body).key_id, peek(body).enc.hex()), (r["key_id"], r["enc_hex"]))
            opened = open_chat_request(self.keys, body)
            self.assertEqual(json.loads(opened.chat_plaintext), r["chat"])
            self.assertEqual(
                (opened.timestamp, opened.device_pubkey.hex()), (r["timestamp"], r["device_public_key_hex"])
            )
        for case in negatives(self.v, "request"):
            with self.assertRaises(OhttpError) as cm:
                open_chat_request(self.keys, hexb(case["encapsulated_request_hex"]))
            self.assertEqual(cm.exception.code, case["refused"], case["name"])

    def read(self, context: Context, body: bytes, step: int) -> tuple[ResponseReader, list[dict[str, Any]], str | None]:
        reader, events = ResponseReader(context), []
        try:
            for i in range(0, len(body), step):
                events += reader.feed(body[i : i + step])
            events += reader.end()
        except StreamError as e:
            return reader, events, e.kind
        return reader, events, None

    def test_answers(self) -> None:
        r = self.v["requests"][0]
        context = self.client_context(r)
        server = open_chat_request(self.keys, hexb(r["encapsulated_request_hex"])).context
        for vector in (self.v["response"], self.v["stale_refusal"]):
            body = hexb(vector["body_hex"])
            for step in (1, 7, len(body)):
                reader, events, refused = self.read(context, body, step)
                self.assertIsNone(refused)
                expected = vector["reader"]
                self.assertEqual(
                    (reader.status, reader.date, events), (expected["status"], expected["date"], expected["events"])
                )
            stream = ResponseStream(server, vector["pad_to"], hexb(vector["response_nonce_hex"]))
            if vector["name"] == "stale":
                again = stream.refusal(401, json.loads(vector["chunks"][0]["line_text"]), date=vector["router_now"])
            else:
                again = stream.start()
                for chunk in vector["chunks"][1:]:
                    event = None if chunk["line_text"] is None else json.loads(chunk["line_text"])
                    again += (
                        stream.keepalive()
                        if event is None
                        else stream.final(event)
                        if chunk["final"]
                        else stream.event(event)
                    )
            self.assertEqual(again.hex(), vector["body_hex"])

    def test_response_negatives(self) -> None:
        context = self.client_context(self.v["requests"][0])
        for case in negatives(self.v, "response"):
            body = hexb(case["body_hex"])
            for step in (1, len(body) or 1):
                _, opened, refused = self.read(context, body, step)
                self.assertEqual(refused, case["refused"], case["name"])
                if step == 1:  # fed whole, the events before the refusal are lost with the feed call
                    self.assertEqual(opened, case["opened"], case["name"])

    def test_pow_challenge(self) -> None:
        """The challenge is v1's, issued to the relay's address; only the hashed value changed (enc)."""
        p = self.v["pow"]
        required = Challenges(hexb(p["router_secret_hex"]), p["ttl"]).issue(
            p["difficulty"], p["now"], p["address"], token=hexb(p["router_token_hex"])
        )
        self.assertEqual(required, p["required"])
