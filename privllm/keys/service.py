"""Keep the HPKE key ring fresh on a timer, adopt the shared file's state, publish the signed set."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..protocol.encoding import dumps
from ..protocol.keyset import keyset_document
from .files import KeyFileError
from .store import KeyRingStore

log = Logger()


class KeyRingService(Service):
    CHECK_EVERY = 60.0  # rotations by the timer or by `privllm-admin rotate` show within a minute
    RESIGN_EVERY = 60  # a set served is at most this old, so it is never near its expiry

    def __init__(self, store: KeyRingStore, identity: Ed25519PrivateKey, clock: Any, keyset_lifetime: int) -> None:
        self._store = store
        self._identity = identity
        self._clock = clock
        self._lifetime = keyset_lifetime
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = clock
        self._published: tuple[int, bytes] | None = None
        # At start a corrupt or foreign key file stops everything (KeyFileError propagates).
        self.ring = store.update(int(clock.seconds()))

    def refresh(self) -> None:
        before = self.ring.keys
        try:
            self._store.update(int(self._clock.seconds()))  # changes self.ring in place
        except (KeyFileError, OSError) as e:
            # Keep serving the keys in memory; never overwrite a file we cannot read.
            log.error("cannot refresh the key ring: {reason}", reason=str(e))
            return
        if self.ring.keys != before:
            self._published = None
            log.info("HPKE key ring updated: live key ids {ids}", ids=[k.key_id for k in self.ring.keys])

    def keyset(self) -> bytes:
        """The signed key set, re-signed once a minute and at once when the ring changed, valid
        for the configured lifetime from its signing."""
        now = int(self._clock.seconds())
        if self._published is None or now - self._published[0] >= self.RESIGN_EVERY:
            doc = keyset_document(self.ring.published(now), now, now + self._lifetime, self._identity)
            self._published = (now, dumps(doc))
        return self._published[1]

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.CHECK_EVERY, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.ring.wipe()
