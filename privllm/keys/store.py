"""
The HPKE key ring file shared by every router process on a machine.

Each change happens under an exclusive lock: load, update, save. Processes sharing the
directory therefore agree on one set, whichever of them rotates first, and an admin
command can rotate while the daemons run (they adopt the file at their next check).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..protocol.keyring import KeyRing
from .files import ensure_private_dir
from .material import load_keyring, new_hpke_keypair, save_keyring

LOCK = "hpke-keyring.lock"


class KeyRingStore:
    def __init__(self, state_dir: str, interval: int, overlap: int) -> None:
        ensure_private_dir(state_dir)
        self.state_dir = state_dir
        self.interval = interval
        self.overlap = overlap

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.state_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update(self, now: int, change: Callable[[KeyRing], None] | None = None) -> KeyRing:
        """Load the ring, bring it up to date at `now` (and apply `change`), save it if it moved."""
        with self._locked():
            ring = load_keyring(self.state_dir, self.interval, self.overlap)
            before = (ring.keys, ring.last_key_id)
            ring.refresh(now, new_hpke_keypair)
            if change is not None:
                change(ring)
            if (ring.keys, ring.last_key_id) != before:
                save_keyring(self.state_dir, ring)
            return ring
