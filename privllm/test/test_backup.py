"""privllm-admin backup and restore: the identity key and TLS material only (and where the HPKE
key ids stood), read strictly, never written over an existing key, all or nothing. The real
router on a restored directory: tests/test_backup_restore.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import tarfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import TestCase

from .. import admin
from ..config.schema import Config, Keys
from ..keys import backup as backup_module
from ..keys import store as store_module
from ..keys.backup import ID_MARGIN, MAX_MEMBER_BYTES, MEMBERS, RING, backup, restore, ring_member, ring_start
from ..keys.files import KeyFileError, ensure_private_dir, write_secret
from ..keys.material import (
    IDENTITY_KEY,
    KEYRING,
    TLS_CERT,
    TLS_KEY,
    ensure_dev_certificate,
    ensure_identity,
    keyring_path,
)
from ..keys.store import KeyRingStore
from ..keys.tls import private_pem

DAY = 86400
NOW = 1_800_000_000


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def tar_bytes(members: list[tarfile.TarInfo], contents: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in zip(members, contents, strict=True):
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


class Fixture(TestCase):
    def setUp(self) -> None:
        self.state = os.path.abspath(self.mktemp())
        ensure_private_dir(self.state)
        ensure_identity(self.state)
        ensure_dev_certificate(self.state, ["127.0.0.1"])
        self.ring = KeyRingStore(self.state, DAY, 3600).update(NOW)  # a ring that must not travel
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
            restore(self.config(self.target), self.archive, NOW)
        self.assertIn(words, str(caught.exception))
        self.assertFalse(os.path.lexists(self.target), "a refused restore writes nothing")

    def admin(self, command: str, state: str) -> int:
        os.environ["PRIVLLM_KEYS__STATE_DIR"] = state
        self.addCleanup(os.environ.pop, "PRIVLLM_KEYS__STATE_DIR", None)
        return admin.main([command, "--archive", self.archive])


class BackupRestore(Fixture):
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
        other = private_pem(ec.generate_private_key(ec.SECP256R1()))
        names = [tarfile.TarInfo(name) for name in MEMBERS]
        self.write_archive(names, [files[IDENTITY_KEY], files[TLS_CERT], other])
        self.assertRefused("does not match")
        os.unlink(self.archive)
        self.write_archive([tarfile.TarInfo(name) for name in MEMBERS], [other, files[TLS_CERT], files[TLS_KEY]])
        self.assertRefused("not an Ed25519 key")

    def test_restore_refuses_a_readable_archive(self) -> None:
        backup(self.config(self.state), self.archive, NOW)
        os.chmod(self.archive, 0o644)
        self.assertRefused("accessible by group or others")

    def test_restore_never_replaces_a_key(self) -> None:
        backup(self.config(self.state), self.archive, NOW)
        ensure_private_dir(self.target)
        write_secret(os.path.join(self.target, IDENTITY_KEY), b"the key in place")
        with self.assertRaises(KeyFileError) as caught:
            restore(self.config(self.target), self.archive, NOW)
        self.assertIn("never replaces a key", str(caught.exception))
        self.assertEqual(os.listdir(self.target), [IDENTITY_KEY])

    def test_backup_refuses_a_readable_key_and_an_existing_archive(self) -> None:
        os.chmod(os.path.join(self.state, IDENTITY_KEY), 0o640)
        with self.assertRaises(KeyFileError):
            backup(self.config(self.state), self.archive, NOW)
        self.assertFalse(os.path.lexists(self.archive))
        os.chmod(os.path.join(self.state, IDENTITY_KEY), 0o600)
        write_secret(self.archive, b"an older back-up")
        with self.assertRaises(FileExistsError):
            backup(self.config(self.state), self.archive, NOW)
        with open(self.archive, "rb") as f:
            self.assertEqual(f.read(), b"an older back-up")

    def test_round_trip_through_the_admin_command(self) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(self.admin("backup", self.state), 0)
            self.assertEqual(self.admin("restore", self.target), 0)
        self.assertEqual(mode(self.archive), 0o600)
        with tarfile.open(self.archive) as tar:
            self.assertEqual(tar.getnames(), [*MEMBERS, RING], "no key ring, no pow.key")
        self.assertEqual(sorted(os.listdir(self.target)), sorted([*MEMBERS, KEYRING]))
        self.assertEqual(mode(self.target), 0o700)
        for name, data in self.files().items():
            path = os.path.join(self.target, name)
            self.assertEqual(mode(path), 0o600)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), data)
        self.assertIn("restored (0600):", out.getvalue())
        self.assertIn("the new key ring's first key id is ", out.getvalue())

    def test_admin_reports_a_refusal_in_one_line(self) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(self.admin("restore", self.target), 2)
        self.assertTrue(err.getvalue().startswith("privllm-admin: secret file "), err.getvalue())
        self.assertIn("missing", err.getvalue())


class RingStart(Fixture):
    """A restored ring must not hand out an id an app's cached key set may still name."""

    def test_restored_ring_starts_past_every_id_the_old_router_can_have_used(self) -> None:
        old_ids = {k.key_id for k in self.ring.keys}
        backup(self.config(self.state), self.archive, NOW)
        later = NOW + 3 * DAY + 1  # four rotations may have happened since
        restore(self.config(self.target), self.archive, later)
        ring = KeyRingStore(self.target, DAY, 3600).update(later)
        first = (self.ring.last_key_id + 4 + ID_MARGIN + 1) % 256
        self.assertEqual([k.key_id for k in ring.keys], [first, (first + 1) % 256])
        self.assertFalse(old_ids & {k.key_id for k in ring.keys})
        with open(keyring_path(self.target), "rb") as f:  # the ring file adds no key of the old router
            self.assertEqual(len(json.loads(f.read())["keys"]), 2)

    def test_ring_start_arithmetic(self) -> None:
        self.assertEqual(ring_start(ring_member(250, DAY, NOW), NOW), (250 + ID_MARGIN) % 256)
        self.assertEqual(ring_start(ring_member(10, DAY, NOW), NOW + DAY), 10 + 1 + ID_MARGIN)
        self.assertEqual(ring_start(ring_member(10, 60, NOW), NOW + 61), 10 + 2 + ID_MARGIN)
        self.assertEqual(ring_start(ring_member(10, DAY, NOW), NOW - DAY), 10 + ID_MARGIN, "a clock set back")
        self.assertIsNone(ring_start(ring_member(None, DAY, NOW), NOW))

    def test_a_corrupt_ring_member_is_refused(self) -> None:
        files = self.files()
        for bad in [
            b"[]",
            b'{"v":1}',
            ring_member(256, DAY, NOW),
            ring_member(1, 0, NOW),
            b'{"v":1,"last_key_id":true,"rotation_interval":60,"made_at":1}',
        ]:
            os.unlink(self.archive) if os.path.lexists(self.archive) else None
            self.write_archive([tarfile.TarInfo(n) for n in (*MEMBERS, RING)], [*files.values(), bad])
            self.assertRefused(f"{RING} is corrupt")

    def test_an_archive_without_ring_member_still_restores_at_a_random_start(self) -> None:
        files = self.files()
        self.write_archive([tarfile.TarInfo(name) for name in MEMBERS], list(files.values()))
        self.patch(store_module.secrets, "randbelow", lambda n: 41)
        written, note = restore(self.config(self.target), self.archive, NOW)
        self.assertIn("random key id", note)
        self.assertEqual(written, [os.path.join(self.target, name) for name in MEMBERS])
        self.assertEqual(sorted(os.listdir(self.target)), sorted(MEMBERS))
        ring = KeyRingStore(self.target, DAY, 3600).update(NOW)
        self.assertEqual([k.key_id for k in ring.keys], [42, 43])

    def test_a_ring_from_nothing_starts_at_a_random_id(self) -> None:
        seen = set()
        for _ in range(8):
            state = os.path.abspath(self.mktemp())
            seen.add(KeyRingStore(state, DAY, 3600).update(NOW).keys[0].key_id)
        self.assertGreater(len(seen), 1, "eight fresh rings all started at the same id")

    def test_a_ring_copied_from_a_sibling_is_kept(self) -> None:
        backup(self.config(self.state), self.archive, NOW)
        ensure_private_dir(self.target)
        write_secret(keyring_path(self.target), b"the sibling's ring")
        written, note = restore(self.config(self.target), self.archive, NOW)
        self.assertIn("kept the key ring", note)
        self.assertNotIn(keyring_path(self.target), written)
        with open(keyring_path(self.target), "rb") as f:
            self.assertEqual(f.read(), b"the sibling's ring")


class AllOrNothing(Fixture):
    def test_a_file_that_appears_after_the_check_is_not_replaced(self) -> None:
        backup(self.config(self.state), self.archive, NOW)
        planted = os.path.join(self.target, TLS_KEY)

        def plant(path: str) -> None:  # runs after restore looked for existing files
            ensure_private_dir(path)
            write_secret(planted, b"a key made a moment ago")

        self.patch(backup_module, "ensure_private_dir", plant)
        with self.assertRaises(KeyFileError) as caught:
            restore(self.config(self.target), self.archive, NOW)
        self.assertIn("appeared during the restore", str(caught.exception))
        with open(planted, "rb") as f:
            self.assertEqual(f.read(), b"a key made a moment ago")
        self.assertEqual(os.listdir(self.target), [TLS_KEY], "the members written before it were removed")

    def test_a_failure_on_the_third_member_leaves_nothing(self) -> None:
        backup(self.config(self.state), self.archive, NOW)
        calls = []
        real = backup_module.create_secret

        def failing(path: str, data: bytes) -> None:
            calls.append(path)
            if len(calls) == 3:
                raise OSError(28, "No space left on device")
            real(path, data)

        self.patch(backup_module, "create_secret", failing)
        with self.assertRaises(OSError):
            restore(self.config(self.target), self.archive, NOW)
        self.assertEqual(len(calls), 3)
        self.assertEqual(os.listdir(self.target), [])


class Parsing(Fixture):
    def test_an_encrypted_identity_key_is_one_clear_error(self) -> None:
        files = self.files()
        key = serialization.load_pem_private_key(files[IDENTITY_KEY], password=None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a passphrase"),
        )
        self.write_archive([tarfile.TarInfo(n) for n in MEMBERS], [encrypted, files[TLS_CERT], files[TLS_KEY]])
        self.assertRefused("not an unencrypted PEM key or certificate")
        os.unlink(os.path.join(self.state, IDENTITY_KEY))
        write_secret(os.path.join(self.state, IDENTITY_KEY), encrypted)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(self.admin("backup", self.state), 2)
        self.assertEqual(err.getvalue().count("\n"), 1, err.getvalue())
        self.assertIn("privllm-admin: the back-up holds a file that is not an unencrypted PEM", err.getvalue())

    def test_a_symlinked_certificate_is_followed_but_must_be_a_regular_file(self) -> None:
        cert = os.path.join(self.state, TLS_CERT)
        elsewhere = os.path.abspath(self.mktemp())
        os.rename(cert, elsewhere)
        os.symlink(elsewhere, cert)
        self.assertEqual(backup(self.config(self.state), self.archive, NOW)[1], cert)
        os.unlink(cert)
        os.unlink(self.archive)
        for odd in (lambda: os.mkdir(cert), lambda: os.mkfifo(cert)):
            odd()
            with self.assertRaises(KeyFileError) as caught:
                backup(self.config(self.state), self.archive, NOW)
            self.assertIn("not a regular file", str(caught.exception))
            self.assertFalse(os.path.lexists(self.archive))
            (os.rmdir if os.path.isdir(cert) else os.unlink)(cert)
