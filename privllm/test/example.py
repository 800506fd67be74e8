"""
The worked example of docs/protocol.md, computed from fixed keys by privllm's own code.

Run `python -m privllm.test.example` to print it; test_protocol_doc checks that the
document holds exactly these values, and that the independent RFC 9180 code agrees.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyhpke import KEMKeyPair

from ..protocol import suite
from ..protocol.encoding import b64encode, canonical_json, dumps
from ..protocol.keyset import PublishedKey, keyset_document
from ..protocol.request import seal_request
from ..protocol.stream import StreamSealer

INPUTS: dict[str, Any] = {
    "identity_seed": "44" * 32,
    "router_private_key": "11" * 32,
    "device_private_key": "22" * 32,
    "ephemeral_private_key": "33" * 32,
    "response_nonce": "55" * 32,
    "key_id": 7,
    "not_before": 1767225600,
    "not_after": 1767315600,
    "issued_at": 1767229200,
    "expires": 1767232800,
    "timestamp": 1767229230,
    "request_id": "ExampleRequestId_0123456789",
    "plaintext": {
        "messages": [{"role": "user", "content": "Who were the US presidents in the 1990s?"}],
        "max_tokens": 64,
    },
    "chunks": [
        {"type": "delta", "text": "George H. W. Bush, "},
        {"type": "delta", "text": "Bill Clinton."},
        {"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 21, "completion_tokens": 9}},
    ],
}


def _key(name: str) -> bytes:
    return bytes.fromhex(INPUTS[name])


def worked_example() -> dict[str, Any]:
    identity = Ed25519PrivateKey.from_private_bytes(_key("identity_seed"))
    router_public = suite.public_of(_key("router_private_key"))
    keyset = keyset_document(
        [PublishedKey(INPUTS["key_id"], router_public, INPUTS["not_before"], INPUTS["not_after"], "current")],
        INPUTS["issued_at"],
        INPUTS["expires"],
        identity,
    )
    unsigned = {k: v for k, v in keyset.items() if k != "signature"}
    ephemeral = KEMKeyPair(
        suite.private_key(_key("ephemeral_private_key")),
        suite.public_key(suite.public_of(_key("ephemeral_private_key"))),
    )
    sealed = seal_request(
        key_id=INPUTS["key_id"],
        router_public_key=router_public,
        device_private_key=_key("device_private_key"),
        plaintext=INPUTS["plaintext"],
        timestamp=INPUTS["timestamp"],
        request_id=INPUTS["request_id"],
        ephemeral=ephemeral,
    )
    keys = sealed.stream_keys(_key("response_nonce"))
    sealer = StreamSealer(keys)
    chunks = INPUTS["chunks"]
    sealed_chunks = [sealer.seal(c, final=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    return {
        "keyset_signed_bytes": canonical_json(unsigned).decode(),
        "keyset": keyset,
        "plaintext_bytes": dumps(INPUTS["plaintext"]).decode(),
        "request": sealed.body,
        "response_secret": sealed.response_secret.hex(),
        "response_key": keys.key.hex(),
        "response_nonce_base": keys.nonce.hex(),
        "init_event": {"response_nonce": b64encode(_key("response_nonce"))},
        "sealed_chunks": sealed_chunks,
    }


if __name__ == "__main__":
    print(json.dumps({"inputs": INPUTS, "outputs": worked_example()}, indent=2))
