"""
Back up and restore what a router cannot make again: its identity key (apps pin it) and its
TLS certificate and key (the dev app trusts exactly that certificate; a prod app may pin the
key). Nothing else: the HPKE key ring rotates on purpose and a copy would outlive the forward
secrecy of its keys; pow.key and state.key guard data that lives minutes and come from a
running sibling router (docs/deployment.md, "Back-up and roll-back").

The archive is a plain tar of those three files, 0600; encrypt it before it leaves the host.
A restore reads it strictly (exactly these names, regular files, small, each key checked)
and writes nothing unless every file is valid and none exists yet.
"""

from __future__ import annotations

import io
import os
import tarfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config import Config
from .files import KeyFileError, ensure_private_dir, read_secret, write_secret
from .material import IDENTITY_KEY, TLS_CERT, TLS_KEY

MEMBERS = (IDENTITY_KEY, TLS_CERT, TLS_KEY)
MAX_MEMBER_BYTES = 1 << 16  # a PEM chain of a few certificates
MAX_ARCHIVE_BYTES = 4 * MAX_MEMBER_BYTES  # three members and tar's headers


def backup_paths(config: Config) -> dict[str, str]:
    """Where each member lives: the configured file, or the dev default in the state directory."""
    state = config.keys.state_dir
    return {
        IDENTITY_KEY: config.keys.identity_key or os.path.join(state, IDENTITY_KEY),
        TLS_CERT: config.server.certificate or os.path.join(state, TLS_CERT),
        TLS_KEY: config.server.private_key or os.path.join(state, TLS_KEY),
    }


def _read_certificate(path: str) -> bytes:
    """A certificate is public (often 0644): bounded and regular, but no mode check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise KeyFileError(f"cannot open certificate {path}: {e.strerror}") from e
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
    try:
        identity = serialization.load_pem_private_key(files[IDENTITY_KEY], password=None)
        chain = x509.load_pem_x509_certificates(files[TLS_CERT])
        tls_key = serialization.load_pem_private_key(files[TLS_KEY], password=None)
    except ValueError as e:
        raise KeyFileError(f"the back-up holds a file that is not a PEM key or certificate: {e}") from e
    if not isinstance(identity, Ed25519PrivateKey):
        raise KeyFileError(f"the back-up's {IDENTITY_KEY} is not an Ed25519 key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*spki) != tls_key.public_key().public_bytes(*spki):
        raise KeyFileError(f"the back-up's {TLS_KEY} does not match {TLS_CERT}")


def backup(config: Config, archive: str) -> list[str]:
    """Write the archive (0600, never over an existing file); return the paths it holds."""
    paths = backup_paths(config)
    files = {
        IDENTITY_KEY: read_secret(paths[IDENTITY_KEY], MAX_MEMBER_BYTES),
        TLS_CERT: _read_certificate(paths[TLS_CERT]),
        TLS_KEY: read_secret(paths[TLS_KEY], MAX_MEMBER_BYTES),
    }
    check_members(files)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(files[name]), 0o600
            tar.addfile(info, io.BytesIO(files[name]))
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(buffer.getvalue())
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(archive)
        raise
    os.close(fd)
    return [paths[name] for name in MEMBERS]


def read_archive(raw: bytes) -> dict[str, bytes]:
    """The members of an archive: only the expected names, once each, regular files, bounded."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if member.name not in MEMBERS or member.name in files or not member.isfile():
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


def restore(config: Config, archive: str) -> list[str]:
    """Put each member back where the configuration says, 0600 in a 0700 state directory.
    Refuses (writing nothing) a bad archive or a place that already holds any of the files."""
    files = read_archive(read_secret(archive, MAX_ARCHIVE_BYTES))
    check_members(files)
    paths = backup_paths(config)
    present = [path for path in paths.values() if os.path.lexists(path)]
    if present:
        raise KeyFileError(f"{', '.join(present)} already exist; a restore never replaces a key")
    ensure_private_dir(config.keys.state_dir)
    for name in MEMBERS:
        os.makedirs(os.path.dirname(os.path.abspath(paths[name])), mode=0o700, exist_ok=True)
        write_secret(paths[name], files[name])
    return [paths[name] for name in MEMBERS]
