"""
Test equipment: a client written from docs/protocol.md alone, on another HPKE implementation
(privllm/test/rfc9180.py) and the standard library, sharing no protocol code with privllm.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import ssl
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from privllm.test import rfc9180

INFO = b"privllm/v1 request"
KEYSET_SKEW = 60  # docs/protocol.md, "Freshness: the client rule"
KEYSET_MAX_LIFETIME = 86400


def keyset_fresh(doc: dict[str, Any], now: int) -> bool:
    """The document's client rule for a key set's issued_at and expires."""
    issued, expires = doc["issued_at"], doc["expires"]
    if not issued < expires <= issued + KEYSET_MAX_LIFETIME:
        return False
    return now + KEYSET_SKEW >= issued and now < expires + KEYSET_SKEW


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


class DocClient:
    def __init__(self, port: int, context: ssl.SSLContext, pin: bytes, source: str | None = None) -> None:
        """`source`: a loopback address to send from (127.0.0.2, ...), to act as another client."""
        self.port, self.context, self.pin = port, context, pin
        self.device = os.urandom(32)
        self.source = (source, 0) if source else None

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=60, source_address=self.source
        )

    def keyset(self) -> dict[str, Any]:
        conn = self.connection()
        conn.request("GET", "/api/pubkey")
        doc = json.loads(conn.getresponse().read())
        signature = unb64(doc.pop("signature"))
        assert unb64(doc["signing_key"]) == self.pin
        signed = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        Ed25519PublicKey.from_public_bytes(self.pin).verify(signature, signed)
        assert keyset_fresh(doc, int(time.time())), "stale key set"
        return doc

    def seal(
        self, plaintext: dict[str, Any], key: dict[str, Any] | None = None, timestamp: int | None = None
    ) -> tuple[dict[str, Any], bytes, bytes]:
        """Return (body, enc, response_secret)."""
        key = key or next(k for k in self.keyset()["keys"] if k["status"] == "current")
        ts = int(time.time()) if timestamp is None else timestamp
        request_id = secrets.token_urlsafe(24)
        aad = f"privllm/v1|{key['key_id']}|{ts}|{request_id}".encode()
        enc, ctx = rfc9180.setup_auth_sender(unb64(key["public_key"]), INFO, self.device, os.urandom(32))
        raw = plaintext if isinstance(plaintext, bytes) else json.dumps(plaintext).encode()
        ciphertext = ctx.seal(aad, raw)
        body = {
            "v": 1,
            "key_id": key["key_id"],
            "encapsulated_key": b64(enc),
            "device_pubkey": b64(rfc9180.public_key(self.device)),
            "timestamp": ts,
            "request_id": request_id,
            "aad": b64(aad),
            "ciphertext": b64(ciphertext),
        }
        return body, enc, ctx.export(b"privllm/v1 response", 32)

    def post(
        self, body: bytes | dict[str, Any], content_type: str = "application/json", origin: str | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """`origin`: sent as a browser's page would send it (CORS)."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn = self.connection()
        headers = {"Content-Type": content_type, "Accept": "text/event-stream"}
        if origin is not None:
            headers["Origin"] = origin
        conn.request("POST", "/api/chat", raw, headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()

    def chat(self, plaintext: dict[str, Any] | bytes) -> list[dict[str, Any]]:
        return open_stream(*self.chat_raw(plaintext))

    def chat_raw(self, plaintext: dict[str, Any] | bytes) -> tuple[bytes, bytes, bytes]:
        """The raw event stream with what opens it: (body, enc, response secret)."""
        body, enc, secret = self.seal(plaintext)
        status, headers, raw = self.post(body)
        assert status == 200, (status, raw)
        assert headers["Content-Type"] == "text/event-stream"
        return raw, enc, secret


def sealed_chunks(raw: bytes) -> list[bytes]:
    return [unb64(data) for name, data in _events(raw) if name == "chunk"]


def _events(raw: bytes) -> list[tuple[str, str]]:
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            events.append((fields["event"], fields["data"]))
    return events


def open_stream(raw: bytes, enc: bytes, secret: bytes) -> list[dict[str, Any]]:
    """Parse the SSE body and open every chunk, following the document step by step."""
    events = _events(raw)
    assert events[0][0] == "init"
    nonce_r = unb64(json.loads(events[0][1])["response_nonce"])
    prk = hmac.new(enc + nonce_r, secret, hashlib.sha256).digest()
    key = hmac.new(prk, b"key\x01", hashlib.sha256).digest()
    base = hmac.new(prk, b"nonce\x01", hashlib.sha256).digest()[:12]
    chunks = []
    sealed = [data for name, data in events[1:] if name == "chunk"]
    for i, data in enumerate(sealed):
        nonce = bytes(a ^ b for a, b in zip(base, i.to_bytes(12, "big"), strict=True))
        aad = b"final" if i == len(sealed) - 1 else b""
        chunks.append(json.loads(ChaCha20Poly1305(key).decrypt(nonce, unb64(data), aad).rstrip(b"\x00")))
    return chunks
