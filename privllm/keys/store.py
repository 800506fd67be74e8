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
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..protocol import suite
from ..protocol.keyring import KEY_ID_SPACE, KeyRing
from .files import ensure_private_dir, read_secret_buffer, wipe
from .material import keyring_path, parse_keyring, save_keyring

LOCK = "hpke-keyring.lock"


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

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.state_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update(self, now: int, change: Callable[[KeyRing], None] | None = None) -> KeyRing:
        """Bring the ring up to date with the file and `now` (and apply `change`), save it if it
        moved. Every call returns the same ring object, changed in place."""
        with self._locked():
            ring = self._read()
            before = (ring.keys, ring.last_key_id)
            ring.refresh(now, suite.new_private_key)
            if change is not None:
                change(ring)
            if (ring.keys, ring.last_key_id) != before:
                self._digest = None  # until the file is known to hold this ring
                self._digest = save_keyring(self.state_dir, ring)
            return ring

    def _read(self) -> KeyRing:
        path = keyring_path(self.state_dir)
        if not os.path.lexists(path):
            # A random start: two routers made from nothing (or restored from an archive that
            # predates ring.json) rarely hand out the same key ids, which an app's cached key
            # set could name (privllm.keys.backup carries the start across a restore).
            loaded = KeyRing([], self.interval, self.overlap, secrets.randbelow(KEY_ID_SPACE))
            digest = b""
        else:
            raw = read_secret_buffer(path)
            try:
                digest = hashlib.sha256(raw).digest()
                if self._ring is not None and digest == self._digest:
                    return self._ring
                loaded = parse_keyring(raw, self.interval, self.overlap, path)
            finally:
                wipe(raw)
        if self._ring is None:
            self._ring = loaded
        else:
            self._ring.adopt(loaded)
        self._digest = digest
        return self._ring
