"""
Process hardening at start: keep memory out of swap and out of core dumps.

- mlockall(MCL_CURRENT | MCL_FUTURE): no page of this process (keys, prompts, answers)
  is written to swap. Needs CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK (the systemd
  unit sets both); prod refuses to start without it unless process.require_mlock = false.
- RLIMIT_CORE = 0 and PR_SET_DUMPABLE = 0: no core dump, no ptrace by same-uid processes,
  and /proc/<pid>/mem is closed to other processes of the same user.

Python cannot promise more: str and bytes are immutable, so copies of a prompt or a key
made by the interpreter or a library cannot be overwritten; see docs/threat-model.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

__all__ = [
    "MCL_CURRENT",
    "MCL_FUTURE",
    "PR_GET_DUMPABLE",
    "PR_SET_DUMPABLE",
    "HygieneError",
    "disable_core_dumps",
    "harden",
    "is_dumpable",
    "lock_memory",
]

MCL_CURRENT = 1
MCL_FUTURE = 2
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


class HygieneError(Exception):
    """A required protection could not be applied; the start stops."""

    code = "hygiene"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def disable_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise HygieneError(f"prctl(PR_SET_DUMPABLE, 0) failed: errno {ctypes.get_errno()}")


def is_dumpable() -> bool:
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def lock_memory() -> str | None:
    """Lock all current and future pages; return None, or why it failed."""
    if _libc().mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        errno = ctypes.get_errno()
        return f"mlockall failed (errno {errno}): give the process CAP_IPC_LOCK or raise LimitMEMLOCK"
    return None


def harden(require_mlock: bool) -> str | None:
    """Apply everything; raise if a required part fails, else return a warning or None."""
    disable_core_dumps()
    problem = lock_memory()
    if problem and require_mlock:
        raise HygieneError(problem + " (or set process.require_mlock = false)")
    return problem
