"""Strict file handling for secrets: refuse anything another user could read or has planted."""

from __future__ import annotations

import os
import secrets
import stat

from .errors import KeysError

__all__ = [
    "KeyFileError",
    "create_secret",
    "ensure_private_dir",
    "fsync_dir",
    "read_secret",
    "read_secret_buffer",
    "wipe",
    "write_secret",
]


class KeyFileError(KeysError):
    """A key file or directory is missing, unsafe or corrupt; the start stops and nothing is overwritten."""

    code = "key_file"


def _check_owner_and_mode(path: str, st: os.stat_result, kind: str) -> None:
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{kind} {path} is owned by uid {st.st_uid}, not by this process (uid {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(f"{kind} {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o})")


def ensure_private_dir(path: str) -> None:
    """Create `path` with mode 0700, or check that the existing one is ours and private."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=False)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"{path} is not a directory")
    _check_owner_and_mode(path, st, "directory")


def _open_secret(path: str, max_size: int) -> tuple[int, int]:
    """Open a secret file after checking it is a regular file, ours, and mode 0600 or stricter.
    Return the descriptor and the file's size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise KeyFileError(f"secret file {path} is missing") from e
    except OSError as e:
        raise KeyFileError(f"cannot open secret file {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"secret file {path} is not a regular file")
        _check_owner_and_mode(path, st, "secret file")
        if st.st_size > max_size:
            raise KeyFileError(f"secret file {path} is too large")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_secret(path: str, max_size: int = 1 << 16) -> bytes:
    fd, _ = _open_secret(path, max_size)
    try:
        return os.read(fd, max_size + 1)
    finally:
        os.close(fd)


def read_secret_buffer(path: str, max_size: int = 1 << 16) -> bytearray:
    """As read_secret, into a buffer of the file's exact size (never resized, so never copied)
    that the caller overwrites with `wipe` when done: bytes objects cannot be wiped."""
    fd, size = _open_secret(path, max_size)
    buffer = bytearray(size)
    try:
        got = os.readv(fd, [buffer]) if size else 0
    finally:
        os.close(fd)
    if got != size:
        wipe(buffer)
        raise KeyFileError(f"secret file {path} changed while it was read")
    return buffer


def wipe(buffer: bytearray) -> None:
    """Overwrite a buffer in place (same length: no reallocation leaves a copy behind)."""
    buffer[:] = bytes(len(buffer))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def create_secret(path: str, data: bytes, mode: int = 0o600) -> None:
    """A new file, never over anything (not even a link or a file made a moment ago):
    FileExistsError if the name is taken. Whole or absent: written and fsynced under a name of
    its own, then linked into place, so another process never reads it half written and a
    crash never leaves a short one. The caller fsyncs the directory (fsync_dir)."""
    tmp = f"{path}.new.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.link(tmp, path)  # FileExistsError if the name is taken, even by a dangling link
    finally:
        os.unlink(tmp)


def fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_secret(path: str, data: bytes, mode: int = 0o600) -> None:
    """Atomic replace: write a new file beside it, fsync, rename over, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    create_secret(tmp, data, mode)
    os.replace(tmp, path)
    fsync_dir(directory)
