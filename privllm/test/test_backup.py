"""privllm-admin backup and restore: the identity key and TLS material only, read strictly,
never written over an existing key. The real router on a restored directory:
tests/test_backup_restore.py."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import TestCase

from .. import admin
from ..config.schema import Config, Keys
from ..keys.backup import MAX_MEMBER_BYTES, MEMBERS, backup, restore
from ..keys.files import KeyFileError, ensure_private_dir, write_secret
from ..keys.material import IDENTITY_KEY, TLS_CERT, TLS_KEY, ensure_dev_certificate, ensure_identity
from ..keys.store import KeyRingStore


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def tar_bytes(members: list[tarfile.TarInfo], contents: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in zip(members, contents, strict=True):
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


class BackupRestore(TestCase):
    def setUp(self) -> None:
        self.state = os.path.abspath(self.mktemp())
        ensure_private_dir(self.state)
        ensure_identity(self.state)
        ensure_dev_certificate(self.state, ["127.0.0.1"])
        KeyRingStore(self.state, 86400, 3600).update(1_800_000_000)  # a ring that must not travel
        write_secret(os.path.join(self.state, "pow.key"), os.urandom(32))
        self.archive = os.path.abspath(self.mktemp())
        self.target = os.path.abspath(self.mktemp())

    def config(self, state: str) -> Config:
        return Config(keys=Keys(state_dir=state))

    def files(self) -> dict[str, bytes]:
        out = {}
        for name in MEMBERS:
            with open(os.path.join(self.state, name), "rb") as f:
                out[name] = f.read()
        return out

    def write_archive(self, members: list[tarfile.TarInfo], contents: list[bytes]) -> None:
        write_secret(self.archive, tar_bytes(members, contents))

    def assertRefused(self, words: str) -> None:
        with self.assertRaises(KeyFileError) as caught:
            restore(self.config(self.target), self.archive)
        self.assertIn(words, str(caught.exception))
        self.assertFalse(os.path.lexists(self.target), "a refused restore writes nothing")

    def test_restore_refuses_an_archive_without_the_identity_key(self) -> None:
        files = self.files()
        self.write_archive([tarfile.TarInfo(TLS_CERT), tarfile.TarInfo(TLS_KEY)], [files[TLS_CERT], files[TLS_KEY]])
        self.assertRefused(f"lacks {IDENTITY_KEY}")

    def test_restore_refuses_unexpected_entries(self) -> None:
        files = self.files()
        link = tarfile.TarInfo(TLS_KEY)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        cases = [
            ([tarfile.TarInfo("../identity.key")], [files[IDENTITY_KEY]]),
            ([tarfile.TarInfo("hpke-keyring.json")], [b"{}"]),
            ([link], [b""]),
            ([tarfile.TarInfo(IDENTITY_KEY), tarfile.TarInfo(IDENTITY_KEY)], [files[IDENTITY_KEY]] * 2),
        ]
        for members, contents in cases:
            os.unlink(self.archive) if os.path.lexists(self.archive) else None
            self.write_archive(members, contents)
            self.assertRefused("unexpected entry")

    def test_restore_refuses_oversized_and_non_tar(self) -> None:
        self.write_archive([tarfile.TarInfo(IDENTITY_KEY)], [b"x" * (MAX_MEMBER_BYTES + 1)])
        self.assertRefused("too large")
        os.unlink(self.archive)
        write_secret(self.archive, b"not a tar archive at all" * 40)
        self.assertRefused("not a tar archive")

    def test_restore_refuses_a_foreign_tls_key_and_a_non_ed25519_identity(self) -> None:
        files = self.files()
        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        names = [tarfile.TarInfo(name) for name in MEMBERS]
        self.write_archive(names, [files[IDENTITY_KEY], files[TLS_CERT], other])
        self.assertRefused("does not match")
        os.unlink(self.archive)
        self.write_archive([tarfile.TarInfo(name) for name in MEMBERS], [other, files[TLS_CERT], files[TLS_KEY]])
        self.assertRefused("not an Ed25519 key")

    def test_restore_refuses_a_readable_archive(self) -> None:
        backup(self.config(self.state), self.archive)
        os.chmod(self.archive, 0o644)
        self.assertRefused("accessible by group or others")

    def test_restore_never_replaces_a_key(self) -> None:
        backup(self.config(self.state), self.archive)
        ensure_private_dir(self.target)
        write_secret(os.path.join(self.target, IDENTITY_KEY), b"the key in place")
        with self.assertRaises(KeyFileError) as caught:
            restore(self.config(self.target), self.archive)
        self.assertIn("never replaces a key", str(caught.exception))
        self.assertEqual(os.listdir(self.target), [IDENTITY_KEY])

    def test_backup_refuses_a_readable_key_and_an_existing_archive(self) -> None:
        os.chmod(os.path.join(self.state, IDENTITY_KEY), 0o640)
        with self.assertRaises(KeyFileError):
            backup(self.config(self.state), self.archive)
        self.assertFalse(os.path.lexists(self.archive))
        os.chmod(os.path.join(self.state, IDENTITY_KEY), 0o600)
        write_secret(self.archive, b"an older back-up")
        with self.assertRaises(FileExistsError):
            backup(self.config(self.state), self.archive)
        with open(self.archive, "rb") as f:
            self.assertEqual(f.read(), b"an older back-up")

    def test_round_trip_through_the_admin_command(self) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(self.admin("backup", self.state), 0)
            self.assertEqual(self.admin("restore", self.target), 0)
        self.assertEqual(mode(self.archive), 0o600)
        with tarfile.open(self.archive) as tar:
            self.assertEqual(tar.getnames(), list(MEMBERS), "no key ring, no pow.key")
        self.assertEqual(sorted(os.listdir(self.target)), sorted(MEMBERS))
        self.assertEqual(mode(self.target), 0o700)
        for name, data in self.files().items():
            path = os.path.join(self.target, name)
            self.assertEqual(mode(path), 0o600)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), data)
        self.assertIn("restored (0600):", out.getvalue())

    def test_admin_reports_a_refusal_in_one_line(self) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(self.admin("restore", self.target), 2)
        self.assertTrue(err.getvalue().startswith("privllm-admin: secret file "), err.getvalue())
        self.assertIn("missing", err.getvalue())

    def admin(self, command: str, state: str) -> int:
        os.environ["PRIVLLM_KEYS__STATE_DIR"] = state
        self.addCleanup(os.environ.pop, "PRIVLLM_KEYS__STATE_DIR", None)
        return admin.main([command, "--archive", self.archive])
