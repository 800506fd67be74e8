"""
Conformance vectors of protocol v1, made by privllm's own code from fixed seeds.

`python -m privllm.test.vectors` writes docs/vectors/protocol-v1.json (`--check` only
compares). Every secret is SHA-256("privllm/v1 vectors " || label), and everything random
in the protocol (the HPKE ephemeral key, the request id, the response nonce, the challenge's
random part) is one of those seeds, so two runs give the same bytes. test_vectors checks the
file against this code and against code that shares nothing with privllm.protocol.

Field names say how a value is written: `_hex` raw bytes in hex, `_b64` standard base64,
`_text` UTF-8 text; objects without a suffix are as on the wire (binary members base64).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyhpke import KEMKeyPair

from ..protocol import suite
from ..protocol.coalesce import delta_json
from ..protocol.encoding import b64decode, b64encode, canonical_json, dumps
from ..protocol.keyset import KEYSET_CLOCK_SKEW, MAX_KEYSET_LIFETIME, PublishedKey, keyset_document
from ..protocol.pow import Challenges, leading_zero_bits, solve, work_hash
from ..protocol.request import SealedRequest, seal_request
from ..protocol.sse import KEEPALIVE, encode_event
from ..protocol.stream import StreamKeys, StreamSealer, chunk_nonce

PATH = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "vectors", "protocol-v1.json")
KEY_ID, NEXT_KEY_ID = 7, 8
NOT_BEFORE, ROTATION = 1767225600, 86400
ISSUED_AT = 1767229200
EXPIRES = ISSUED_AT + 3600
TIMESTAMP = ISSUED_AT + 30
REQUEST_ID = "VectorRequestId_0123456789-_abc"
OTHER_REQUEST_ID = "VectorRequestId_9876543210-_xyz"
PLAINTEXT: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Grüße! Which planet is largest? 🪐"},
    ],
    "max_tokens": 64,
    "temperature": 0.5,
    "verbosity": "brief",
}
# (pad_to, [(chunk object, is final)]): an answer padded to 64 bytes, with a delta of
# non-ASCII text, one of exactly 64 bytes (no padding), one over 64 (padded to 128); and an
# answer ending in an error, padded to the router's default of 256.
ANSWER_PAD = 64
ANSWER: list[dict[str, Any]] = [
    {"type": "delta", "text": "Jupiter"},
    {"type": "delta", "text": ", größer als alle 🌍"},
    {"type": "delta", "text": " " + "x" * 37},
    {"type": "delta", "text": ": its mass is 2.5 times that of all the other planets together."},
    {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 31, "completion_tokens": 17}},
]
ERROR_PAD = 256
ERROR_ANSWER: list[dict[str, Any]] = [
    {"type": "delta", "text": "Jupiter"},
    {"type": "error", "code": "upstream_failed", "message": "the inference server failed"},
]
POW_ADDRESS = "192.0.2.1"
POW_DIFFICULTY = 16
POW_TTL = 60
POW_NOW = TIMESTAMP + 1


def seed(label: str) -> bytes:
    return hashlib.sha256(b"privllm/v1 vectors " + label.encode()).digest()


def x25519_pair(label: str) -> tuple[bytes, bytes]:
    private = seed(label)
    return private, suite.public_of(private)


def identity(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed(label))


def identity_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def flip(data_b64: str, index: int) -> str:
    """The base64 of the value with one bit of byte `index` flipped."""
    raw = bytearray(b64decode(data_b64))
    raw[index] ^= 0x01
    return b64encode(bytes(raw))


def keyset_vector() -> dict[str, Any]:
    signer = identity("identity")
    keys: list[dict[str, Any]] = []
    for key_id, label, status, start in (
        (KEY_ID, "router key 7", "current", 0),
        (NEXT_KEY_ID, "router key 8", "next", 1),
    ):
        private, public = x25519_pair(label)
        not_before = NOT_BEFORE + start * ROTATION
        keys.append(
            {
                "key_id": key_id,
                "private_key_hex": private.hex(),
                "public_key_hex": public.hex(),
                "not_before": not_before,
                "not_after": not_before + ROTATION + ROTATION // 4,
                "status": status,
            }
        )
    published = [
        PublishedKey(k["key_id"], bytes.fromhex(k["public_key_hex"]), k["not_before"], k["not_after"], k["status"])
        for k in keys
    ]
    document = keyset_document(published, ISSUED_AT, EXPIRES, signer)
    signed = canonical_json({k: v for k, v in document.items() if k != "signature"})
    return {
        "identity_seed_hex": seed("identity").hex(),
        "pin_hex": identity_public(signer).hex(),
        "keys": keys,
        "issued_at": ISSUED_AT,
        "expires": EXPIRES,
        "signed_text": signed.decode("utf-8"),
        "signature_hex": b64decode(document["signature"]).hex(),
        "document": document,
        # The client rule's edges: fresh from issued_at - S to expires + S - 1.
        "fresh_at": [ISSUED_AT - KEYSET_CLOCK_SKEW, TIMESTAMP, EXPIRES + KEYSET_CLOCK_SKEW - 1],
        "chosen_key_id_at_timestamp": KEY_ID,
    }


def ephemeral_pair() -> KEMKeyPair:
    private = seed("ephemeral")
    return KEMKeyPair(suite.private_key(private), suite.public_key(suite.public_of(private)))


def sealed_request(router_public: bytes) -> SealedRequest:
    return seal_request(
        key_id=KEY_ID,
        router_public_key=router_public,
        device_private_key=seed("device"),
        plaintext=PLAINTEXT,
        timestamp=TIMESTAMP,
        request_id=REQUEST_ID,
        ephemeral=ephemeral_pair(),
    )


def request_vector() -> tuple[dict[str, Any], SealedRequest]:
    router_private, router_public = x25519_pair("router key 7")
    device_private, device_public = x25519_pair("device")
    sealed = sealed_request(router_public)
    shared_secret, enc = suite.SUITE.kem.encap(
        suite.public_key(router_public), suite.private_key(device_private), ephemeral_pair()
    )
    assert enc == sealed.encapsulated_key
    vector = {
        "key_id": KEY_ID,
        "router_private_key_hex": router_private.hex(),
        "router_public_key_hex": router_public.hex(),
        "device_private_key_hex": device_private.hex(),
        "device_public_key_hex": device_public.hex(),
        "ephemeral_private_key_hex": seed("ephemeral").hex(),
        "enc_hex": enc.hex(),
        "timestamp": TIMESTAMP,
        "request_id": REQUEST_ID,
        "info_text": suite.REQUEST_INFO.decode(),
        "aad_text": suite.request_aad(KEY_ID, TIMESTAMP, REQUEST_ID).decode(),
        "plaintext_text": dumps(PLAINTEXT).decode("utf-8"),
        "shared_secret_hex": shared_secret.hex(),
        "ciphertext_hex": b64decode(sealed.body["ciphertext"]).hex(),
        "body": sealed.body,
        "export_label_text": suite.RESPONSE_EXPORT_LABEL.decode(),
        "response_secret_hex": sealed.response_secret.hex(),
    }
    return vector, sealed


def chunk_plaintext(chunk: dict[str, Any]) -> bytes:
    """As the router encodes it: a delta's JSON is built directly, a final chunk's dumped."""
    return delta_json(chunk["text"]) if chunk["type"] == "delta" else dumps(chunk)


def init_event(response_nonce: bytes) -> bytes:
    return encode_event("init", dumps({"response_nonce": b64encode(response_nonce)}).decode())


def sse(response_nonce: bytes | None, sealed: list[str], keepalive_after: int | None = None) -> str:
    """A response body: init (if any), the chunk events, a keep-alive comment after one of them."""
    body = init_event(response_nonce) if response_nonce is not None else b""
    for i, data in enumerate(sealed):
        body += encode_event("chunk", data)
        if i == keepalive_after:
            body += KEEPALIVE
    return body.decode("utf-8")


def stream_vector(
    name: str, sealed: SealedRequest, pad_to: int, chunks: list[dict[str, Any]]
) -> tuple[dict[str, Any], StreamKeys]:
    response_nonce = seed(f"response nonce {name}")
    keys = sealed.stream_keys(response_nonce)
    sealer = StreamSealer(keys, pad_to=pad_to)
    base = int.from_bytes(keys.nonce, "big")
    entries: list[dict[str, Any]] = []
    for i, chunk in enumerate(chunks):
        final = i == len(chunks) - 1
        plaintext = chunk_plaintext(chunk)
        data = sealer.seal_json(plaintext, final)
        padding = -len(plaintext) % pad_to if pad_to else 0
        entries.append(
            {
                "plaintext_text": plaintext.decode("utf-8"),
                "padded_plaintext_hex": (plaintext + b"\x00" * padding).hex(),
                "nonce_hex": chunk_nonce(base, i).hex(),
                "aad_text": suite.FINAL_AAD.decode() if final else "",
                "final": final,
                "sealed_b64": data,
            }
        )
    vector = {
        "name": name,
        "pad_to": pad_to,
        "response_nonce_hex": response_nonce.hex(),
        "init": {"response_nonce": b64encode(response_nonce)},
        "key_hex": keys.key.hex(),
        "nonce_base_hex": keys.nonce.hex(),
        "chunks": entries,
        "sse_text": sse(response_nonce, [e["sealed_b64"] for e in entries], keepalive_after=0),
        "opened": chunks,
    }
    return vector, keys


def pow_vector() -> tuple[dict[str, Any], bytes]:
    secret = seed("pow secret")
    token = seed("pow token")[:16]
    required = Challenges(secret, POW_TTL).issue(POW_DIFFICULTY, POW_NOW, POW_ADDRESS, token=token)
    challenge = b64decode(required["challenge"])
    nonce = solve(challenge, REQUEST_ID, POW_DIFFICULTY)
    digest = work_hash(challenge, REQUEST_ID, nonce)
    vector = {
        "router_secret_hex": secret.hex(),
        "router_token_hex": token.hex(),
        "address": POW_ADDRESS,
        "ttl": POW_TTL,
        "now": POW_NOW,
        "required": required,
        "challenge_hex": challenge.hex(),
        "request_id": REQUEST_ID,
        "difficulty": POW_DIFFICULTY,
        "nonce_hex": nonce.hex(),
        "work_hash_hex": digest.hex(),
        "leading_zero_bits": leading_zero_bits(digest),
        "pow": {"challenge": required["challenge"], "nonce": b64encode(nonce)},
    }
    return vector, challenge


def keyset_negatives(keyset: dict[str, Any]) -> list[dict[str, Any]]:
    document = keyset["document"]
    pin = keyset["pin_hex"]
    swapped = json.loads(json.dumps(document))
    swapped["keys"][0]["public_key"] = b64encode(x25519_pair("attacker router key")[1])
    too_long = keyset_document(
        [
            PublishedKey(
                KEY_ID, bytes.fromhex(keyset["keys"][0]["public_key_hex"]), NOT_BEFORE, NOT_BEFORE + ROTATION, "current"
            )
        ],
        ISSUED_AT,
        ISSUED_AT + MAX_KEYSET_LIFETIME + 1,
        identity("identity"),
    )
    cases = [
        (
            "keyset_wrong_pin",
            "the app pins another identity key",
            document,
            identity_public(identity("other identity")).hex(),
            TIMESTAMP,
            "wrong_pin",
        ),
        ("keyset_tampered", "an HPKE key replaced after signing", swapped, pin, TIMESTAMP, "bad_signature"),
        ("keyset_stale", "now = expires + S", document, pin, EXPIRES + KEYSET_CLOCK_SKEW, "stale"),
        (
            "keyset_not_yet_valid",
            "now = issued_at - S - 1",
            document,
            pin,
            ISSUED_AT - KEYSET_CLOCK_SKEW - 1,
            "not_yet_valid",
        ),
        (
            "keyset_lifetime_too_long",
            "well signed, but expires - issued_at > 86400",
            too_long,
            pin,
            ISSUED_AT,
            "malformed",
        ),
    ]
    return [
        {
            "name": name,
            "about": about,
            "check": "keyset",
            "document": doc,
            "pin_hex": pin_hex,
            "now": now,
            "refused": refused,
        }
        for name, about, doc, pin_hex, now, refused in cases
    ]


def request_negatives(request: dict[str, Any]) -> list[dict[str, Any]]:
    body = request["body"]
    other_id = {**body, "request_id": OTHER_REQUEST_ID}
    other_device = {**body, "device_pubkey": b64encode(x25519_pair("other device")[1])}
    tampered = {**body, "ciphertext": flip(body["ciphertext"], 0)}
    cases = [
        ("request_tampered_ciphertext", "one bit of the ciphertext flipped", tampered),
        ("request_aad_mismatch", "request_id changed: the aad member no longer matches the fields", other_id),
        ("request_other_device", "device_pubkey replaced: mode_auth binds the sender's key", other_device),
    ]
    return [
        {
            "name": name,
            "about": about,
            "check": "request",
            "body": changed,
            "router_private_key_hex": request["router_private_key_hex"],
            "refused": "decrypt_failed",
        }
        for name, about, changed in cases
    ]


def _sealed_at(keys: StreamKeys, index: int, plaintext: bytes, final: bool) -> str:
    """A chunk sealed as chunk number `index` of the stream (the sealer refuses to go past a final one)."""
    sealer = StreamSealer(keys)
    for _ in range(index):
        sealer.seal_json(b"{}")
    return sealer.seal_json(plaintext, final)


def stream_negatives(answer: dict[str, Any], keys: StreamKeys) -> list[dict[str, Any]]:
    """Bodies that each end the answer stream's reading; all open with the request's keys."""
    nonce = bytes.fromhex(answer["response_nonce_hex"])
    sealed = [c["sealed_b64"] for c in answer["chunks"]]
    last = len(sealed) - 1
    extra = _sealed_at(keys, len(sealed), delta_json("more"), final=False)
    final_delta = _sealed_at(keys, 0, delta_json("Jupiter"), final=True)
    cases = [
        (
            "stream_tampered_chunk",
            "one bit of chunk 1's ciphertext flipped",
            sse(nonce, [sealed[0], flip(sealed[1], 0), *sealed[2:]]),
            "tampered",
            1,
        ),
        (
            "stream_tampered_tag",
            "one bit of the final chunk's tag flipped",
            sse(nonce, [*sealed[:last], flip(sealed[last], -1)]),
            "tampered",
            last,
        ),
        ("stream_reordered", "chunks 0 and 1 swapped", sse(nonce, [sealed[1], sealed[0], *sealed[2:]]), "tampered", 0),
        ("stream_truncated", "the final chunk is missing", sse(nonce, sealed[:last]), "truncated", last),
        ("stream_empty", "the body ends before any event", "", "truncated", 0),
        (
            "stream_chunk_after_final",
            f"a well sealed chunk (index {len(sealed)}, empty AAD) after the final one",
            sse(nonce, [*sealed, extra]),
            "after_final",
            last + 1,
        ),
        ("stream_final_delta", "a delta sealed with the AAD final", sse(nonce, [final_delta]), "malformed", 0),
        (
            "stream_other_response_nonce",
            "the init event carries another response nonce",
            sse(seed("response nonce other"), sealed),
            "tampered",
            0,
        ),
        (
            "stream_chunk_before_init",
            "a chunk event before init",
            sse(None, sealed[:1]) + init_event(nonce).decode(),
            "malformed",
            0,
        ),
    ]
    return [
        {"name": name, "about": about, "check": "stream", "sse_text": body, "refused": refused, "opened_before": opened}
        for name, about, body, refused, opened in cases
    ]


def pow_negatives(pow_: dict[str, Any], challenge: bytes) -> list[dict[str, Any]]:
    nonce = bytes.fromhex(pow_["nonce_hex"])
    weak = next(
        n.to_bytes(8, "big")
        for n in range(64)
        if leading_zero_bits(work_hash(challenge, REQUEST_ID, n.to_bytes(8, "big"))) < POW_DIFFICULTY
    )
    assert leading_zero_bits(work_hash(challenge, OTHER_REQUEST_ID, nonce)) < POW_DIFFICULTY
    expires = pow_["required"]["expires"]
    cases = [
        (
            "pow_too_weak",
            "a nonce whose work hash has fewer leading zero bits than asked",
            REQUEST_ID,
            weak,
            POW_NOW,
            "too_weak",
        ),
        (
            "pow_other_request_id",
            "the good nonce, sent with another request id",
            OTHER_REQUEST_ID,
            nonce,
            POW_NOW,
            "too_weak",
        ),
        ("pow_expired", "the good nonce, after the challenge's expires", REQUEST_ID, nonce, expires + 1, "expired"),
    ]
    out = [
        {
            "name": name,
            "about": about,
            "check": "pow",
            "request_id": request_id,
            "pow": {"challenge": pow_["pow"]["challenge"], "nonce": b64encode(n)},
            "now": now,
            "refused": refused,
        }
        for name, about, request_id, n, now, refused in cases
    ]
    too_hard = Challenges(seed("pow secret"), POW_TTL).issue(
        suite.POW_MAX_DIFFICULTY + 1, POW_NOW, POW_ADDRESS, token=seed("pow token")[:16]
    )
    out.append(
        {
            "name": "pow_too_hard",
            "about": "a challenge asking more than the protocol's ceiling of 24 bits: the client does no work",
            "check": "pow_required",
            "required": too_hard,
            "refused": "too_hard",
        }
    )
    return out


def vectors() -> dict[str, Any]:
    keyset = keyset_vector()
    request, sealed = request_vector()
    answer, answer_keys = stream_vector("answer", sealed, ANSWER_PAD, ANSWER)
    error, _ = stream_vector("error", sealed, ERROR_PAD, ERROR_ANSWER)
    pow_, challenge = pow_vector()
    return {
        "about": {
            "protocol": suite.VERSION,
            "made_by": "python -m privllm.test.vectors",
            "described_in": "docs/protocol.md, Conformance vectors",
            "seeds": "every private value is SHA-256('privllm/v1 vectors ' || label)",
            "suffixes": "_hex: raw bytes in hex; _b64: standard base64; _text: UTF-8 text; objects as on the wire",
        },
        "keyset": keyset,
        "request": request,
        "streams": [answer, error],
        "pow": pow_,
        "negative": [
            *keyset_negatives(keyset),
            *request_negatives(request),
            *stream_negatives(answer, answer_keys),
            *pow_negatives(pow_, challenge),
        ],
    }


def render() -> bytes:
    return render_json(vectors())


def render_json(data: dict[str, Any]) -> bytes:
    """The vector files' one form: sorted keys, two spaces, UTF-8, a final newline."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_or_check(path: str, data: bytes, module: str, argv: list[str]) -> int:
    """Write the file, or with --check say whether it matches (exit 1 if not)."""
    if argv[1:] == ["--check"]:
        with open(path, "rb") as f:
            same = f.read() == data
        print("up to date" if same else f"{path} differs from the code: run python -m {module}")
        return 0 if same else 1
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return 0


def main(argv: list[str]) -> int:
    return write_or_check(PATH, render(), "privllm.test.vectors", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
