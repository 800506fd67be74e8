"""Keep the HPKE key ring fresh on a timer, adopt the shared file's state, publish the signed set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..protocol.encoding import dumps
from ..protocol.keyset import keyset_document
from ..protocol.v2.keys import GatewayKeys, SignedKeyConfigs, key_config, sign_key_configs
from .files import KeyFileError
from .store import KeyRingStore, Update

__all__ = ["InThread", "KeyRingService"]

log = Logger()

InThread = Callable[..., "Deferred[Any]"]  # deferToThread's shape: run f(*args) elsewhere, fire with its result


class KeyRingService(Service):
    CHECK_EVERY = 60.0  # rotations by the timer or by `privllm-admin rotate` show within a minute
    RESIGN_EVERY = 60  # a set served is at most this old, so it is never near its expiry

    def __init__(
        self,
        store: KeyRingStore,
        identity: Ed25519PrivateKey,
        clock: IReactorTime,
        keyset_lifetime: int,
        in_thread: InThread = deferToThread,
    ) -> None:
        self._store = store
        self._identity = identity
        self._clock = clock
        self._lifetime = keyset_lifetime
        self._in_thread = in_thread
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = clock
        self._published: tuple[int, bytes] | None = None
        self._published_v2: SignedKeyConfigs | None = None
        self._refreshing = False
        self._stopped: Deferred[None] | None = None
        # At start a corrupt or foreign key file stops everything (KeyFileError propagates).
        # Synchronous: nothing serves yet, and the reactor is not running.
        self.ring = store.update(int(clock.seconds()))
        self.gateway_keys = GatewayKeys(self.ring)  # protocol v2 opens requests with these

    def refresh(self) -> Deferred[None]:
        """The file work (a lock shared with other processes, maybe an fsync) runs in a thread
        on a copy; the ring that admission reads changes only here, on the reactor thread, in
        one step. LoopingCall waits for the returned Deferred, so two never overlap."""
        self._refreshing = True
        d = self._in_thread(self._store.prepare, lambda: int(self._clock.seconds()))
        d.addCallbacks(self._apply, self._failed)
        d.addBoth(self._finished)
        return d

    def _apply(self, update: Update) -> None:
        if not self.running:  # stopped meanwhile: the ring is about to be wiped, and so is this
            update.discard()
            return
        before = self.ring.keys
        self._store.apply(update)
        if self.ring.keys != before:
            self._published = self._published_v2 = None
            self.gateway_keys.clear()  # no reference to a key the ring dropped (and wiped) stays here
            log.info("HPKE key ring updated: live key ids {ids}", ids=[k.key_id for k in self.ring.keys])

    def _failed(self, failure: Failure) -> None:
        failure.trap(KeyFileError, OSError)
        # Keep serving the keys in memory; never overwrite a file we cannot read.
        log.error("cannot refresh the key ring: {reason}", reason=str(failure.value))

    def _finished(self, result: object) -> object:
        self._refreshing = False
        if self._stopped is not None:
            self.ring.wipe()
            self.gateway_keys.clear()
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)
        return result

    def keyset(self) -> bytes:
        """The signed key set, re-signed once a minute and at once when the ring changed, valid
        for the configured lifetime from its signing."""
        now = int(self._clock.seconds())
        if self._published is None or now - self._published[0] >= self.RESIGN_EVERY:
            doc = keyset_document(self.ring.published(now), now, now + self._lifetime, self._identity)
            self._published = (now, dumps(doc))
        return self._published[1]

    def ohttp_keys(self) -> SignedKeyConfigs:
        """Protocol v2's signed key configurations, re-signed as `keyset` is. A ring that
        publishes no key (it always has a current one once updated) cannot be encoded: Malformed."""
        now = int(self._clock.seconds())
        signed = self._published_v2
        if signed is None or now - signed.issued >= self.RESIGN_EVERY:
            configs = [key_config(k.key_id, k.public_key) for k in self.ring.published(now)]
            signed = sign_key_configs(configs, now, now + self._lifetime, self._identity)
            self._published_v2 = signed
        return signed

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.CHECK_EVERY, now=False)

    def stopService(self) -> Deferred[None] | None:
        """Wipe the ring, after a refresh under way has finished (its thread then holds no key)."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._refreshing:
            if self._stopped is None:
                self._stopped = Deferred()
            waiter: Deferred[None] = Deferred()
            self._stopped.addCallback(lambda _: waiter.callback(None))
            return waiter
        self.ring.wipe()
        self.gateway_keys.clear()
        return None
