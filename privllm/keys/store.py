"""
The HPKE key ring file shared by every router process on a machine.

Each change happens under an exclusive lock: load, update, save. Processes sharing the
directory therefore agree on one set, whichever of them rotates first, and an admin
command can rotate while the daemons run (they adopt the file at their next check).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..protocol import suite
from ..protocol.keyring import KEY_ID_SPACE, KeyRing
from .files import KeyFileError, ensure_private_dir, read_secret_buffer, wipe
from .material import keyring_path, parse_keyring, save_keyring

__all__ = ["LOCK", "LOCK_POLL", "LOCK_WAIT", "KeyRingStore", "Update"]

LOCK = "hpke-keyring.lock"


@dataclass
class Update:
    """A ring brought up to date with the file, waiting to be applied to the held one."""

    ring: KeyRing
    digest: bytes  # SHA-256 of the file as it holds `ring`

    def discard(self) -> None:
        self.ring.wipe()


LOCK_WAIT = 30.0  # seconds a check waits for another process's hold on the ring's lock
LOCK_POLL = 0.05


class KeyRingStore:
    """Holds one ring for the life of the process: the file is parsed only when its contents
    changed (by another process or an admin command), so a check every minute makes no copy
    of the private keys, and keys loaded again are dropped in favour of the ones held."""

    def __init__(self, state_dir: str, interval: int, overlap: int) -> None:
        ensure_private_dir(state_dir)
        self.state_dir = state_dir
        self.interval = interval
        self.overlap = overlap
        self._ring: KeyRing | None = None
        self._digest: bytes | None = None  # SHA-256 of the file as this ring last read or wrote it
        self.lock_wait = LOCK_WAIT

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.state_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            self._lock(fd)
            yield
        finally:
            os.close(fd)

    def _lock(self, fd: int) -> None:
        """The shared lock, waited for at most `lock_wait` seconds: a process that holds it for
        ever (hung, or stopped) makes a check fail with one logged line, retried a minute later,
        rather than wait silently while the current key runs out, and keeps a stop bounded."""
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise KeyFileError(
                        f"the key ring lock in {self.state_dir} was held by another process for {self.lock_wait:g} s"
                    ) from None
                time.sleep(LOCK_POLL)

    def update(self, now: int, change: Callable[[KeyRing], None] | None = None) -> KeyRing:
        """Bring the ring up to date with the file and `now` (and apply `change`), save it if it
        moved. Every call returns the same ring object, changed in place."""
        return self.apply(self.prepare(lambda: now, change))

    def prepare(self, clock: Callable[[], int], change: Callable[[KeyRing], None] | None = None) -> Update:
        """The file work of `update`, under the lock: read, refresh, change, save if it moved.
        It changes neither the held ring nor the store, so it may run in another thread while
        the ring serves, provided one prepare-then-apply finishes before the next starts.
        `clock` is read once the lock is held: the wait for it can last `lock_wait`."""
        with self._locked():
            now = clock()
            ring, digest = self._read()
            try:
                before = (ring.keys, ring.last_key_id)
                ring.refresh(now, suite.new_private_key)
                if change is not None:
                    change(ring)
                if (ring.keys, ring.last_key_id) != before:
                    digest = save_keyring(self.state_dir, ring)
            except BaseException:
                ring.wipe()  # keys made or loaded here and never saved or adopted
                raise
            return Update(ring, digest)

    def apply(self, update: Update) -> KeyRing:
        """Make the held ring the prepared one (in the thread that reads the ring): keys both
        hold stay ours, the copies and the keys that left are dropped."""
        if self._ring is None:
            self._ring = update.ring
        else:
            self._ring.adopt(update.ring)
        self._digest = update.digest
        return self._ring

    def _read(self) -> tuple[KeyRing, bytes]:
        """A ring to change, and the SHA-256 of the file it came from (b"" with no file)."""
        path = keyring_path(self.state_dir)
        if not os.path.lexists(path):
            # A random start: two routers made from nothing (or restored from an archive that
            # predates ring.json) rarely hand out the same key ids, which an app's cached key
            # set could name (privllm.keys.backup carries the start across a restore).
            return KeyRing([], self.interval, self.overlap, secrets.randbelow(KEY_ID_SPACE)), b""
        raw = read_secret_buffer(path)
        try:
            digest = hashlib.sha256(raw).digest()
            if self._ring is not None and digest == self._digest:
                return self._ring.copy(), digest
            return parse_keyring(raw, self.interval, self.overlap, path), digest
        finally:
            wipe(raw)
