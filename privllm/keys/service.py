"""Keep the HPKE key ring fresh on a timer, persist each change, and publish the signed key set."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..protocol.encoding import dumps
from ..protocol.keyring import KeyRing
from ..protocol.keyset import keyset_document
from .material import new_hpke_keypair, save_keyring

log = Logger()


class KeyRingService(Service):
    CHECK_EVERY = 60.0

    def __init__(self, ring: KeyRing, identity: Ed25519PrivateKey, state_dir: str, clock: Any) -> None:
        self.ring = ring
        self._identity = identity
        self._state_dir = state_dir
        self._clock = clock
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = clock
        self._published: tuple[int, bytes] | None = None
        self.refresh()

    def refresh(self) -> None:
        if self.ring.refresh(int(self._clock.seconds()), new_hpke_keypair):
            save_keyring(self._state_dir, self.ring)
            self._published = None
            log.info("HPKE key ring updated: live key ids {ids}", ids=[k.key_id for k in self.ring.keys])

    def keyset(self) -> bytes:
        """The signed key set, re-signed at most once a minute (issued_at moves with it)."""
        now = int(self._clock.seconds())
        if self._published is None or now - self._published[0] >= 60:
            doc = keyset_document(self.ring.published(now), now, self._identity)
            self._published = (now, dumps(doc))
        return self._published[1]

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.CHECK_EVERY, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
