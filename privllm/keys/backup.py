"""
Back up and restore what a router cannot make again: its identity key (apps pin it) and its
TLS certificate and key (the dev app trusts exactly that certificate; a prod app may pin the
key). Nothing else secret: the HPKE key ring rotates on purpose and a copy would outlive the
forward secrecy of its keys; pow.key and state.key guard data that lives minutes and come from
a running sibling router (docs/deployment.md, "Back-up and roll-back").

One non-secret member, ring.json, says where the ring's key ids stood: an app keeps a key set
for keys.keyset_lifetime, and a restored router whose new ring reused one of its ids for a
different key would fail the app's requests with decrypt_failed (clients retry only on
unknown_key). The restore therefore starts the new ring past any id the old router can have
handed out since the back-up.

The archive is a plain tar, 0600; encrypt it before it leaves the host. A restore reads it
strictly (exactly these names, regular files, small, each key checked) and writes all of the
files or none, never over an existing one.
"""

from __future__ import annotations

import io
import math
import os
import stat
import tarfile

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config import Config
from ..protocol.encoding import EncodingError, dumps, loads_bounded
from ..protocol.keyring import KEY_ID_SPACE, KeyRing
from .files import (
    KeyFileError,
    create_secret,
    ensure_private_dir,
    fsync_dir,
    read_secret,
    read_secret_buffer,
    wipe,
)
from .material import IDENTITY_KEY, TLS_CERT, TLS_KEY, keyring_json, keyring_path, parse_keyring

__all__ = [
    "ID_MARGIN",
    "MAX_ARCHIVE_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_RING_BYTES",
    "MEMBERS",
    "RING",
    "backup",
    "backup_paths",
    "check_members",
    "read_archive",
    "restore",
    "ring_member",
    "ring_start",
]

MEMBERS = (IDENTITY_KEY, TLS_CERT, TLS_KEY)
RING = "ring.json"  # not secret: where the key ids stood, the rotation interval, when
MAX_MEMBER_BYTES = 1 << 16  # a PEM chain of a few certificates
MAX_RING_BYTES = 256
MAX_ARCHIVE_BYTES = 5 * MAX_MEMBER_BYTES  # four members and tar's headers
# Ids a router may hand out beyond one per rotation interval: `privllm-admin rotate`, and a
# new current key when it starts after its keys ran out.
ID_MARGIN = 16


def backup_paths(config: Config) -> dict[str, str]:
    """Where each member lives: the configured file, or the dev default in the state directory."""
    state = config.keys.state_dir
    return {
        IDENTITY_KEY: config.keys.identity_key or os.path.join(state, IDENTITY_KEY),
        TLS_CERT: config.server.certificate or os.path.join(state, TLS_CERT),
        TLS_KEY: config.server.private_key or os.path.join(state, TLS_KEY),
    }


def _read_certificate(path: str) -> bytes:
    """A certificate is public (often 0644, often a link into a certificate manager's tree, which
    the daemon follows too): bounded and regular, but no mode check. O_NONBLOCK: a FIFO planted
    there is refused by the fstat below instead of blocking the open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise KeyFileError(f"cannot open certificate {path}: {e.strerror}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KeyFileError(f"certificate {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise KeyFileError(f"certificate {path} is too large")
    return data


def check_members(files: dict[str, bytes]) -> None:
    """Every member present and sound, the TLS key the certificate's: a back-up that could not
    start a router is refused when it is made and when it is restored."""
    missing = [name for name in MEMBERS if name not in files]
    if missing:
        raise KeyFileError(f"the back-up lacks {', '.join(missing)}")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        identity = serialization.load_pem_private_key(files[IDENTITY_KEY], password=None)
        chain = x509.load_pem_x509_certificates(files[TLS_CERT])
        tls_key = serialization.load_pem_private_key(files[TLS_KEY], password=None)
        matches = chain[0].public_key().public_bytes(*spki) == tls_key.public_key().public_bytes(*spki)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        # TypeError: an encrypted key (the daemon reads keys without a password)
        raise KeyFileError(f"the back-up holds a file that is not an unencrypted PEM key or certificate: {e}") from e
    if not isinstance(identity, Ed25519PrivateKey):
        raise KeyFileError(f"the back-up's {IDENTITY_KEY} is not an Ed25519 key")
    if not matches:
        raise KeyFileError(f"the back-up's {TLS_KEY} does not match {TLS_CERT}")


def _last_key_id(state_dir: str) -> int | None:
    """The last key id the router's ring handed out, None without a ring file."""
    path = keyring_path(state_dir)
    if not os.path.lexists(path):
        return None
    raw = read_secret_buffer(path)
    try:
        ring = parse_keyring(raw, 1, 0, path)
    finally:
        wipe(raw)
    ring.wipe()
    return ring.last_key_id


def ring_member(last_key_id: int | None, interval: int, now: int) -> bytes:
    return dumps({"v": 1, "last_key_id": last_key_id, "rotation_interval": interval, "made_at": now})


def ring_start(raw: bytes, now: int) -> int | None:
    """The last_key_id a restored ring starts from: past every id the old router can have handed
    out since the back-up (one per rotation interval, and a margin). None when the old ring's
    position is unknown."""
    try:
        doc = loads_bounded(raw, MAX_RING_BYTES, max_depth=1)
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError("unknown version")
        last, interval, made_at = doc["last_key_id"], doc["rotation_interval"], doc["made_at"]
        for value in (interval, made_at) + (() if last is None else (last,)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError("not a non-negative integer")
        if (last is not None and last >= KEY_ID_SPACE) or interval == 0:
            raise ValueError("out of range")
    except (ValueError, KeyError, EncodingError) as e:
        raise KeyFileError(f"the back-up's {RING} is corrupt: {e}") from e
    if last is None:
        return None
    rotations = math.ceil(max(0, now - made_at) / interval)
    return (last + rotations + ID_MARGIN) % KEY_ID_SPACE


def backup(config: Config, archive: str, now: int) -> list[str]:
    """Write the archive (0600, never over an existing file); return the paths it holds."""
    paths = backup_paths(config)
    files = {
        IDENTITY_KEY: read_secret(paths[IDENTITY_KEY], MAX_MEMBER_BYTES),
        TLS_CERT: _read_certificate(paths[TLS_CERT]),
        TLS_KEY: read_secret(paths[TLS_KEY], MAX_MEMBER_BYTES),
        RING: ring_member(_last_key_id(config.keys.state_dir), config.keys.rotation_interval, now),
    }
    check_members(files)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in (*MEMBERS, RING):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(files[name]), 0o600
            tar.addfile(info, io.BytesIO(files[name]))
    create_secret(archive, buffer.getvalue())
    return [paths[name] for name in MEMBERS]


def read_archive(raw: bytes) -> dict[str, bytes]:
    """The members of an archive: only the expected names, once each, regular files, bounded."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if member.name not in (*MEMBERS, RING) or member.name in files or not member.isfile():
                    raise KeyFileError(f"the back-up holds an unexpected entry {member.name[:64]!r}")
                if member.size > MAX_MEMBER_BYTES:
                    raise KeyFileError(f"the back-up's {member.name} is too large")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise KeyFileError(f"the back-up's {member.name} cannot be read")
                files[member.name] = extracted.read(MAX_MEMBER_BYTES + 1)
    except tarfile.TarError as e:
        raise KeyFileError(f"the back-up is not a tar archive: {e}") from e
    return files


def restore(config: Config, archive: str, now: int) -> tuple[list[str], str]:
    """Put each member back where the configuration says, 0600 in a 0700 state directory, and
    start the key ring where ring.json says. Return the paths written and a word on the ring.
    Refuses (writing nothing) a bad archive or a place that already holds any of the keys."""
    files = read_archive(read_secret(archive, MAX_ARCHIVE_BYTES))
    check_members(files)
    start = ring_start(files[RING], now) if RING in files else None
    paths = backup_paths(config)
    present = [path for path in paths.values() if os.path.lexists(path)]
    if present:
        raise KeyFileError(f"{', '.join(present)} already exist; a restore never replaces a key")
    ensure_private_dir(config.keys.state_dir)
    written = _create_all([(paths[name], files[name]) for name in MEMBERS])
    if start is None:
        return written, (
            f"the back-up holds no key id position ({RING}): the new key ring starts at a random key id, "
            "so an app holding the old router's key set may see decrypt_failed until it expires"
        )
    ring = KeyRing([], config.keys.rotation_interval, config.keys.overlap, start)
    ring_path = keyring_path(config.keys.state_dir)
    try:
        create_secret(ring_path, keyring_json(ring))
    except FileExistsError:
        return written, f"kept the key ring in place, {ring_path}"
    except BaseException:
        for path in written:
            os.unlink(path)
        raise
    fsync_dir(config.keys.state_dir)
    return [*written, ring_path], f"the new key ring's first key id is {(start + 1) % KEY_ID_SPACE}"


def _create_all(items: list[tuple[str, bytes]]) -> list[str]:
    """Create every file or, removing those it made, none: a half-restored router would start
    with a new identity or certificate of its own."""
    written: list[str] = []
    try:
        for path, data in items:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, mode=0o700, exist_ok=True)
            try:
                create_secret(path, data)
            except FileExistsError as e:
                raise KeyFileError(f"{path} appeared during the restore; a restore never replaces a key") from e
            written.append(path)
            fsync_dir(directory)
    except BaseException:
        for path in written:
            os.unlink(path)
        raise
    return written
