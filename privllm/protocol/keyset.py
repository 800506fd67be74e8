"""The router's published HPKE key set, signed by its long-lived Ed25519 identity key."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import suite
from .encoding import EncodingError, b64decode, b64encode, canonical_json


@dataclass(frozen=True)
class PublishedKey:
    key_id: int
    public_key: bytes
    not_before: int
    not_after: int
    status: str  # "current" | "next"


def keyset_document(keys: list[PublishedKey], issued_at: int, identity: Ed25519PrivateKey) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": suite.VERSION,
        "kem_id": suite.KEM_ID,
        "kdf_id": suite.KDF_ID,
        "aead_id": suite.AEAD_ID,
        "keys": [
            {
                "key_id": k.key_id,
                "public_key": b64encode(k.public_key),
                "not_before": k.not_before,
                "not_after": k.not_after,
                "status": k.status,
            }
            for k in keys
        ],
        "issued_at": issued_at,
        "signing_key": b64encode(identity.public_key().public_bytes_raw()),
    }
    doc["signature"] = b64encode(identity.sign(canonical_json(doc)))
    return doc


class KeySetError(Exception):
    """The key set is malformed, signed by another key, or badly signed."""


def verify_keyset(raw: bytes, pinned_identity: bytes) -> list[PublishedKey]:
    """Check the signature against the pinned identity key and return the keys."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise KeySetError("not an object")
        signature = b64decode(doc.pop("signature"), suite.ED25519_SIGNATURE_SIZE)
        signing_key = b64decode(doc["signing_key"], suite.ED25519_KEY_SIZE)
        if signing_key != pinned_identity:
            raise KeySetError("signed by a key other than the pinned identity")
        Ed25519PublicKey.from_public_bytes(signing_key).verify(signature, canonical_json(doc))
        if (doc["v"], doc["kem_id"], doc["kdf_id"], doc["aead_id"]) != (
            suite.VERSION,
            suite.KEM_ID,
            suite.KDF_ID,
            suite.AEAD_ID,
        ):
            raise KeySetError("unsupported suite")
        return [
            PublishedKey(
                key_id=int(k["key_id"]),
                public_key=b64decode(k["public_key"], suite.X25519_KEY_SIZE),
                not_before=int(k["not_before"]),
                not_after=int(k["not_after"]),
                status=str(k["status"]),
            )
            for k in doc["keys"]
        ]
    except InvalidSignature as e:
        raise KeySetError("bad signature") from e
    except (KeyError, TypeError, ValueError, EncodingError) as e:
        raise KeySetError("malformed key set") from e


def choose_key(keys: list[PublishedKey], now: int) -> PublishedKey:
    """The client's choice: the current key if its window holds `now`, else any key whose window does."""
    usable = [k for k in keys if k.not_before <= now < k.not_after]
    if not usable:
        raise KeySetError("no key is valid now")
    usable.sort(key=lambda k: (k.status != "current", k.not_before))
    return usable[0]
