"""Small builders shared by the unit tests."""

from __future__ import annotations

import os
from typing import Any

from ..protocol import suite
from ..protocol.keyring import KeyRing, RingKey
from ..protocol.request import Encapsulation, SealedRequest, new_request_id, seal_request

NOW = 1_800_000_000


def ring(now: int = NOW, interval: int = 86400, overlap: int = 3600) -> KeyRing:
    r = KeyRing([], interval, overlap)
    r.refresh(now, suite.new_private_key)
    return r


def current_key(r: KeyRing, now: int = NOW) -> RingKey:
    published = r.published(now)[0]
    key = r.accepting(published.key_id, now)
    assert key is not None
    return key


def sealed_request(
    key: RingKey,
    device: bytes | None = None,
    timestamp: int = NOW,
    request_id: str | None = None,
    plaintext: dict[str, Any] | None = None,
    encapsulation: Encapsulation | None = None,
) -> SealedRequest:
    return seal_request(
        key_id=key.key_id,
        router_public_key=key.public_key,
        device_private_key=device or os.urandom(32),
        plaintext=plaintext or {"messages": [{"role": "user", "content": "hi"}]},
        timestamp=timestamp,
        request_id=request_id or new_request_id(),
        encapsulation=encapsulation,
    )
