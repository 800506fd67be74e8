"""
Conformance vectors of protocol v2 (Oblivious HTTP), made by privllm's own code from fixed seeds.

`python -m privllm.test.vectors_v2` writes docs/vectors/protocol-v2.json (`--check` only
compares). Every secret is SHA-256("privllm/v2 vectors " || label), and everything random in
the protocol (the HPKE ephemeral key, the response nonce, the challenge's random part) is one
of those seeds, so two runs give the same bytes. test_vectors_v2 checks the file against this
code and against code that shares nothing with privllm.protocol.

The key configurations' signature headers are made here from the construction of
docs/protocol.md, "Key configurations", since the router's route is not part of the sans-IO
layer. Field names say how a value is written, as in protocol-v1.json: `_hex` raw bytes in
hex, `_b64` standard base64, `_text` UTF-8 text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyhpke import KEMKeyPair

from ..config.schema import Replay
from ..protocol import suite as v1_suite
from ..protocol.device import device_proof
from ..protocol.encoding import b64decode, b64encode, dumps
from ..protocol.keyset import KEYSET_CLOCK_SKEW
from ..protocol.ohttp import bhttp
from ..protocol.ohttp.bhttp_stream import ResponseEncoder
from ..protocol.ohttp.chunked import RESPONSE_LABEL, ChunkedResponseOpener, ChunkedResponseSealer
from ..protocol.ohttp.keyconfig import KeyConfig, encode_key_config, encode_key_configs
from ..protocol.ohttp.message import REQUEST_LABEL, Context, GatewayKey, Header, sender_context
from ..protocol.ohttp.suites import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    AEAD_CHACHA20_POLY1305,
    KDF_HKDF_SHA256,
    KEM_X25519,
    SymmetricSuite,
    hpke_suite,
)
from ..protocol.ohttp.wire import decode_varint, encode_varint, varint_size
from ..protocol.pow import Challenges, leading_zero_bits, solve, work_hash
from ..protocol.v2.request import SealedV2, open_chat_request, seal_chat_request
from ..protocol.v2.response import EVENTS_TYPE, ResponseReader, ResponseStream, http_date
from .vectors import PLAINTEXT, render_json, write_or_check

PATH = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "vectors", "protocol-v2.json")
CHACHA = SymmetricSuite(KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305)
AES128 = SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM)
SUITES = (CHACHA, AES128)
KEY_ID, NEXT_KEY_ID, UNKNOWN_KEY_ID = 7, 8, 9
KEYS_LABEL = b"privllm/v2 ohttp-keys\x00"
ISSUED = 1767229200
EXPIRES = ISSUED + 3600
TIMESTAMP = ISSUED + 30
WINDOW, FUTURE_SKEW = Replay().window, Replay().future_skew  # the router's defaults
STALE_NOW = TIMESTAMP + WINDOW + 1
AUTHORITY = "privllm"
CHAT: dict[str, Any] = PLAINTEXT  # v1's vectors' chat: the same question in both versions
ANSWER_PAD = 64
DONE: dict[str, Any] = {
    "type": "done",
    "finish_reason": "stop",
    "usage": {"prompt_tokens": 31, "completion_tokens": 17},
}
# What the router writes, in order: ("event", delta) | ("keepalive", None) | ("final", done or error).
ANSWER: list[tuple[str, dict[str, Any] | None]] = [
    ("event", {"type": "delta", "text": "Jupiter"}),
    ("keepalive", None),
    ("event", {"type": "delta", "text": ", größer als alle 🌍"}),
    ("event", {"type": "delta", "text": ": its mass is 2.5 times that of all the other planets together."}),
    ("final", DONE),
]
STALE_EVENT = {"type": "error", "code": "stale", "message": "the request's timestamp is outside the window"}
DELTA = {"type": "delta", "text": "more"}
POW_ADDRESS = "192.0.2.1"  # a relay's address: v2 issues challenges per address as v1 does
POW_DIFFICULTY = 16
POW_TTL = 60
POW_NOW = TIMESTAMP + 1
# a point of order 8 (RFC 7748 section 6.1 lists its like): X25519 with it gives all zeros
SMALL_ORDER_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def seed(label: str) -> bytes:
    return hashlib.sha256(b"privllm/v2 vectors " + label.encode()).digest()


def identity(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed(label))


def identity_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def kem_pair(private: bytes) -> KEMKeyPair:
    kem = hpke_suite(KEM_X25519, CHACHA).kem
    return KEMKeyPair(kem.deserialize_private_key(private), kem.deserialize_public_key(v1_suite.public_of(private)))


def config_of(key_id: int) -> KeyConfig:
    return KeyConfig(key_id, KEM_X25519, v1_suite.public_of(seed(f"router key {key_id}")), SUITES)


def gateway_keys() -> dict[int, GatewayKey]:
    return {k: GatewayKey(config_of(k), kem_pair(seed(f"router key {k}")).private_key) for k in (KEY_ID, NEXT_KEY_ID)}


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def signed_bytes(issued: int, expires: int, body: bytes) -> bytes:
    return KEYS_LABEL + issued.to_bytes(8, "big") + expires.to_bytes(8, "big") + body


def key_headers(signer: Ed25519PrivateKey, issued: int, expires: int, body: bytes) -> dict[str, str]:
    """The response headers of `GET /api/ohttp-keys` (docs/protocol.md, Fixed details of v2)."""
    return {
        "Content-Type": "application/ohttp-keys",
        "Cache-Control": "public, max-age=300",
        "Privllm-Keys-Signing-Key": b64encode(identity_public(signer)),
        "Privllm-Keys-Issued": str(issued),
        "Privllm-Keys-Expires": str(expires),
        "Privllm-Keys-Signature": b64encode(signer.sign(signed_bytes(issued, expires, body))),
    }


def key_configs_vector() -> dict[str, Any]:
    signer = identity("identity")
    configs = [config_of(k) for k in (KEY_ID, NEXT_KEY_ID)]
    body = encode_key_configs(configs)
    return {
        "identity_seed_hex": seed("identity").hex(),
        "pin_hex": identity_public(signer).hex(),
        "keys": [
            {
                "key_id": c.key_id,
                "kem_id": c.kem_id,
                "private_key_hex": seed(f"router key {c.key_id}").hex(),
                "public_key_hex": c.public_key.hex(),
                "suites": [[s.kdf_id, s.aead_id] for s in c.suites],
                "key_config_hex": encode_key_config(c).hex(),
            }
            for c in configs
        ],
        "issued": ISSUED,
        "expires": EXPIRES,
        "body_hex": body.hex(),
        "signed_hex": signed_bytes(ISSUED, EXPIRES, body).hex(),
        "signature_hex": signer.sign(signed_bytes(ISSUED, EXPIRES, body)).hex(),
        "headers": key_headers(signer, ISSUED, EXPIRES, body),
        # v1's client rule: fresh from issued - S to expires + S - 1.
        "fresh_at": [ISSUED - KEYSET_CLOCK_SKEW, TIMESTAMP, EXPIRES + KEYSET_CLOCK_SKEW - 1],
    }


def sealed_request(suite: SymmetricSuite) -> SealedV2:
    return seal_chat_request(
        config_of(KEY_ID),
        seed("device"),
        CHAT,
        TIMESTAMP,
        ephemeral=kem_pair(seed(f"ephemeral {suite.aead_id}")),
        authority=AUTHORITY,
        suite=suite,
    )


def proof_parts(enc: bytes, timestamp: int) -> dict[str, Any]:
    device_private, router_public = seed("device"), config_of(KEY_ID).public_key
    return {
        "proof_message_hex": (b"privllm/v2 device proof\x00" + enc + timestamp.to_bytes(8, "big")).hex(),
        "proof_hex": device_proof(device_private, router_public, enc, timestamp).hex(),
    }


def request_vector(suite: SymmetricSuite) -> tuple[dict[str, Any], SealedV2]:
    sealed = sealed_request(suite)
    header = Header(KEY_ID, KEM_X25519, suite)
    opened = open_chat_request(gateway_keys(), sealed.body)
    proof = proof_parts(sealed.enc, TIMESTAMP)
    content = {
        "v": 2,
        "timestamp": TIMESTAMP,
        "device_pubkey": b64encode(v1_suite.public_of(seed("device"))),
        "proof": b64encode(bytes.fromhex(proof["proof_hex"])),
        "chat": CHAT,
    }
    request = bhttp.Request(
        b"POST", b"https", AUTHORITY.encode(), b"/api/chat", ((b"content-type", b"application/json"),), dumps(content)
    )
    plaintext = bhttp.encode_request(request)
    prefix_size = len(header.encode()) + len(sealed.enc)
    vector = {
        "suite": [suite.kdf_id, suite.aead_id],
        "key_id": KEY_ID,
        "router_private_key_hex": seed(f"router key {KEY_ID}").hex(),
        "router_public_key_hex": config_of(KEY_ID).public_key.hex(),
        "device_private_key_hex": seed("device").hex(),
        "device_public_key_hex": v1_suite.public_of(seed("device")).hex(),
        "ephemeral_private_key_hex": seed(f"ephemeral {suite.aead_id}").hex(),
        "enc_hex": sealed.enc.hex(),
        "timestamp": TIMESTAMP,
        "chat": CHAT,
        **proof,
        "content_text": dumps(content).decode("utf-8"),
        "bhttp_request_hex": plaintext.hex(),
        "header_hex": header.encode().hex(),
        "info_hex": header.info(REQUEST_LABEL).hex(),
        "ciphertext_hex": sealed.body[prefix_size:].hex(),
        "encapsulated_request_hex": sealed.body.hex(),
        "response_secret_label_text": RESPONSE_LABEL.decode(),
        "response_secret_hex": sealed.context.hpke.export(RESPONSE_LABEL, suite.entropy_size).hex(),
    }
    assert opened.chat_plaintext and opened.enc == sealed.enc
    return vector, sealed


def split_chunks(wire: bytes, nonce_size: int) -> list[bytes]:
    """The sealed chunks of a chunked response written by this code (lengths before all but the last)."""
    at, out = nonce_size, list[bytes]()
    while True:
        size = varint_size(wire[at])
        length = decode_varint(wire[at : at + size])
        at += size
        if length == 0:
            return [*out, wire[at:]]
        out.append(wire[at : at + length])
        at += length


def response_vector(
    name: str, sealed: SealedV2, steps: list[tuple[str, dict[str, Any] | None]], refusal_date: int | None = None
) -> dict[str, Any]:
    """An answer (start, steps) or, with `refusal_date`, the inner 401 stale refusal."""
    context = sealed.context
    response_nonce = seed(f"response nonce {name}")[: context.suite.entropy_size]
    stream = ResponseStream(open_chat_request(gateway_keys(), sealed.body).context, ANSWER_PAD, response_nonce)
    kinds: list[tuple[str, dict[str, Any] | None]]
    if refusal_date is not None:
        outputs = [stream.refusal(401, STALE_EVENT, date=refusal_date)]
        kinds = [("refusal", STALE_EVENT)]
    else:
        outputs = [stream.start()]
        kinds = [("head", None)]
        for kind, obj in steps:
            assert kind == "keepalive" or obj is not None
            outputs.append(
                stream.keepalive() if obj is None else stream.event(obj) if kind == "event" else stream.final(obj)
            )
            kinds.append((kind, obj))
    body = b"".join(outputs)
    opener = ChunkedResponseOpener(context)
    plaintexts = [*opener.feed(body), opener.end()]
    sealed_chunks = split_chunks(body, len(response_nonce))
    key, base = context.response_key(RESPONSE_LABEL, response_nonce)
    chunks = []
    for i, ((kind, obj), plaintext, data) in enumerate(zip(kinds, plaintexts, sealed_chunks, strict=True)):
        final = i == len(plaintexts) - 1
        chunks.append(
            {
                "what": kind,
                "event": obj,
                "line_text": None if obj is None else (dumps(obj) + b"\n").decode("utf-8"),
                "plaintext_hex": plaintext.hex(),
                "nonce_hex": (int.from_bytes(base, "big") ^ i).to_bytes(12, "big").hex(),
                "aad_text": "final" if final else "",
                "final": final,
                "sealed_hex": data.hex(),
                "wire_hex": (encode_varint(0 if final else len(data)) + data).hex(),
            }
        )
    reader = ResponseReader(context)
    events = reader.feed(body) + reader.end()
    return {
        "name": name,
        "pad_to": ANSWER_PAD,
        "events_content_type_text": EVENTS_TYPE.decode(),
        "response_nonce_hex": response_nonce.hex(),
        "key_hex": key.hex(),
        "nonce_base_hex": base.hex(),
        "chunks": chunks,
        "body_hex": body.hex(),
        "reader": {"status": reader.status, "date": reader.date, "events": events},
    }


def refusal_vector(sealed: SealedV2) -> dict[str, Any]:
    vector = response_vector("stale", sealed, [], refusal_date=STALE_NOW)
    return {
        **vector,
        "window": WINDOW,
        "future_skew": FUTURE_SKEW,
        "router_now": STALE_NOW,
        "date_text": http_date(STALE_NOW).decode(),
        "clock_offset": STALE_NOW - TIMESTAMP,
    }


def pow_vector(enc: bytes) -> tuple[dict[str, Any], bytes]:
    """A v1 challenge solved over `enc`: SHA-256(challenge || enc || nonce), sent as Privllm-Pow."""
    secret, token = seed("pow secret"), seed("pow token")[:16]
    required = Challenges(secret, POW_TTL).issue(POW_DIFFICULTY, POW_NOW, POW_ADDRESS, token=token)
    challenge_b64 = str(required["challenge"])
    challenge = b64decode(challenge_b64)
    nonce = solve(challenge, enc, POW_DIFFICULTY)
    digest = work_hash(challenge, enc, nonce)
    return {
        "router_secret_hex": secret.hex(),
        "router_token_hex": token.hex(),
        "address": POW_ADDRESS,
        "ttl": POW_TTL,
        "now": POW_NOW,
        "required": required,
        "challenge_hex": challenge.hex(),
        "enc_hex": enc.hex(),
        "difficulty": POW_DIFFICULTY,
        "nonce_hex": nonce.hex(),
        "work_hash_hex": digest.hex(),
        "leading_zero_bits": leading_zero_bits(digest),
        "header_text": f"{challenge_b64}.{b64encode(nonce)}",
    }, challenge


def key_configs_negatives(keys: dict[str, Any]) -> list[dict[str, Any]]:
    signer = identity("identity")
    body = bytes.fromhex(keys["body_hex"])
    other = identity("other identity")
    # one bit of key 7's public key flipped: 2 (length) + 1 (key id) + 2 (KEM) bytes in
    swapped = flip(body, 5)
    long_lived = key_headers(signer, ISSUED, ISSUED + 86400 + 1, body)
    cases = [
        (
            "key_configs_wrong_pin",
            "well signed, by an identity key other than the one the app pins",
            body,
            key_headers(other, ISSUED, EXPIRES, body),
            TIMESTAMP,
            "wrong_pin",
        ),
        (
            "key_configs_tampered",
            "one bit of a public key flipped after signing",
            swapped,
            keys["headers"],
            TIMESTAMP,
            "bad_signature",
        ),
        ("key_configs_stale", "now = expires + S", body, keys["headers"], EXPIRES + KEYSET_CLOCK_SKEW, "stale"),
        (
            "key_configs_not_yet_valid",
            "now = issued - S - 1",
            body,
            keys["headers"],
            ISSUED - KEYSET_CLOCK_SKEW - 1,
            "not_yet_valid",
        ),
        (
            "key_configs_lifetime_too_long",
            "well signed, but expires - issued > 86400",
            body,
            long_lived,
            ISSUED,
            "malformed",
        ),
    ]
    return [
        {
            "name": name,
            "about": about,
            "check": "key_configs",
            "body_hex": data.hex(),
            "headers": headers,
            "pin_hex": keys["pin_hex"],
            "now": now,
            "refused": refused,
        }
        for name, about, data, headers, now, refused in cases
    ]


def crafted_request(content: dict[str, Any], label: str, header: Header | None = None) -> bytes:
    """An encapsulated request whose JSON is `content` as given (proof included), sealed to key 7."""
    prefix, context = sender_context(config_of(KEY_ID), CHACHA, REQUEST_LABEL, kem_pair(seed(label)))
    request = bhttp.Request(
        b"POST", b"https", AUTHORITY.encode(), b"/api/chat", ((b"content-type", b"application/json"),), dumps(content)
    )
    if header is not None:
        prefix = header.encode() + prefix[len(header.encode()) :]
    return prefix + context.hpke.seal(bhttp.encode_request(request), b"")


def forged_proof(device_public: bytes, enc: bytes) -> bytes:
    """The proof anyone can make for a device key of small order: its shared secret is all zeros."""
    router_public = config_of(KEY_ID).public_key
    prk = hmac.new(bytes(32), bytes(32), hashlib.sha256).digest()
    key = hmac.new(prk, b"privllm/v2 device key" + device_public + router_public + b"\x01", hashlib.sha256).digest()
    return hmac.new(key, b"privllm/v2 device proof\x00" + enc + TIMESTAMP.to_bytes(8, "big"), hashlib.sha256).digest()


def request_negatives(request: dict[str, Any]) -> list[dict[str, Any]]:
    body = bytes.fromhex(request["encapsulated_request_hex"])
    content = json.loads(request["content_text"])
    lifted = crafted_request(content, "ephemeral lifted")  # the vector's proof, made for the vector's enc
    small = SMALL_ORDER_POINT
    other_enc = v1_suite.public_of(seed("ephemeral small order"))
    small_order = crafted_request(
        {**content, "device_pubkey": b64encode(small), "proof": b64encode(forged_proof(small, other_enc))},
        "ephemeral small order",
    )
    aes256 = Header(KEY_ID, KEM_X25519, SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_256_GCM)).encode()
    cases = [
        (
            "request_tampered_ciphertext",
            "one bit of the ciphertext flipped",
            flip(body, len(body) - 20),
            "decrypt_failed",
        ),
        ("request_tampered_enc", "one bit of enc flipped", flip(body, 10), "decrypt_failed"),
        (
            "request_proof_for_another_enc",
            "a new encapsulation carrying the device proof made for the vector request's enc",
            lifted,
            "decrypt_failed",
        ),
        (
            "request_small_order_device_key",
            "device_pubkey of order 8 and the proof anyone can make for it (an all-zero X25519 secret)",
            small_order,
            "decrypt_failed",
        ),
        (
            "request_unknown_key_id",
            f"key id {UNKNOWN_KEY_ID}: no live key",
            bytes([UNKNOWN_KEY_ID]) + body[1:],
            "unknown_key",
        ),
        ("request_unknown_suite", "AES-256-GCM, which no key configuration offers", aes256 + body[7:], "unknown_key"),
    ]
    return [
        {"name": name, "about": about, "check": "request", "encapsulated_request_hex": data.hex(), "refused": refused}
        for name, about, data, refused in cases
    ]


def events_content(*objs: dict[str, Any]) -> bytes:
    """One BHTTP content chunk of padded lines, as ResponseStream writes them."""
    data = b""
    for obj in objs:
        line = dumps(obj) + b"\n"
        data += line + bytes(-len(line) % ANSWER_PAD)
    return encode_varint(len(data)) + data


def raw_answer(server: Context, label: str, chunks: list[bytes], final: bytes) -> bytes:
    sealer = ChunkedResponseSealer(server, seed(f"response nonce {label}"))
    return b"".join(sealer.seal(c) for c in chunks) + sealer.seal(final, final=True)


def response_negatives(answer: dict[str, Any], sealed: SealedV2) -> list[dict[str, Any]]:
    server = open_chat_request(gateway_keys(), sealed.body).context
    nonce = bytes.fromhex(answer["response_nonce_hex"])
    wires = [bytes.fromhex(c["wire_hex"]) for c in answer["chunks"]]
    deltas = [c["event"] for c in answer["chunks"] if c["what"] == "event"]
    head = ResponseEncoder().head(200, ((b"content-type", EVENTS_TYPE),))
    end = b"\x00\x00"  # content terminator, empty trailers
    tampered = bytearray(wires[1])
    tampered[-1] ^= 0x01
    extra = ChunkedResponseSealer(server, nonce)
    for _ in wires:
        extra.seal(b"\x01")
    after = extra.seal(events_content(DELTA))
    cases = [
        (
            "response_tampered_chunk",
            "one bit of chunk 1's tag flipped",
            nonce + wires[0] + bytes(tampered) + b"".join(wires[2:]),
            "tampered",
            [],
        ),
        (
            "response_other_nonce",
            "another response nonce",
            seed("response nonce other") + b"".join(wires),
            "tampered",
            [],
        ),
        (
            "response_truncated",
            "the body ends before the final chunk",
            nonce + b"".join(wires[:-1]),
            "truncated",
            deltas,
        ),
        ("response_empty", "an empty body", b"", "truncated", []),
        (
            "response_chunk_after_final",
            "a well sealed chunk (next index, empty AAD) after the final one: the final chunk runs to the end of the body",
            nonce + b"".join(wires) + after,
            "tampered",
            deltas,
        ),
        (
            "response_event_after_last",
            "the final chunk holds done, then a delta",
            raw_answer(server, "after last", [head], events_content(DONE, DELTA) + end),
            "after_final",
            [],
        ),
        (
            "response_delta_in_final_chunk",
            "the final chunk holds a delta and the end, no done",
            raw_answer(server, "final delta", [head, events_content(DELTA)], events_content(DELTA) + end),
            "malformed",
            [DELTA],
        ),
        (
            "response_last_event_early",
            "done in a chunk that is not the final one",
            raw_answer(server, "early done", [head, events_content(DONE)], events_content(DELTA) + end),
            "malformed",
            [],
        ),
    ]
    return [
        {
            "name": name,
            "about": about,
            "check": "response",
            "body_hex": body.hex(),
            "refused": refused,
            "opened": before,
        }
        for name, about, body, refused, before in cases
    ]


def pow_negatives(pow_: dict[str, Any], challenge: bytes) -> list[dict[str, Any]]:
    nonce = bytes.fromhex(pow_["nonce_hex"])
    other_enc = v1_suite.public_of(seed("ephemeral lifted"))
    assert leading_zero_bits(work_hash(challenge, other_enc, nonce)) < POW_DIFFICULTY
    expires = pow_["required"]["expires"]
    cases = [
        ("pow_other_enc", "the good header, sent with a request of another enc", other_enc, POW_NOW, "too_weak"),
        (
            "pow_expired",
            "the good header, after the challenge's expires",
            bytes.fromhex(pow_["enc_hex"]),
            expires + 1,
            "expired",
        ),
    ]
    return [
        {
            "name": name,
            "about": about,
            "check": "pow",
            "enc_hex": enc.hex(),
            "header_text": pow_["header_text"],
            "now": now,
            "refused": refused,
        }
        for name, about, enc, now, refused in cases
    ]


def vectors() -> dict[str, Any]:
    keys = key_configs_vector()
    request, sealed = request_vector(CHACHA)
    request_aes, _ = request_vector(AES128)
    answer = response_vector("answer", sealed, ANSWER)
    pow_, challenge = pow_vector(sealed.enc)
    return {
        "about": {
            "protocol": 2,
            "made_by": "python -m privllm.test.vectors_v2",
            "described_in": "docs/protocol.md, Protocol v2: conformance vectors",
            "seeds": "every private value is SHA-256('privllm/v2 vectors ' || label)",
            "suffixes": "_hex: raw bytes in hex; _b64: standard base64; _text: UTF-8 text; objects as on the wire",
        },
        "key_configs": keys,
        "requests": [request, request_aes],
        "response": answer,
        "stale_refusal": refusal_vector(sealed),
        "pow": pow_,
        "negative": [
            *key_configs_negatives(keys),
            *request_negatives(request),
            *response_negatives(answer, sealed),
            *pow_negatives(pow_, challenge),
        ],
    }


def render() -> bytes:
    return render_json(vectors())


def main(argv: list[str]) -> int:
    return write_or_check(PATH, render(), "privllm.test.vectors_v2", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
