from __future__ import annotations

import os
import stat
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import TestCase

from ..keys import files
from ..keys.files import KeyFileError, create_secret, ensure_private_dir, read_secret, write_secret
from ..keys.material import ensure_dev_certificate, ensure_identity, load_identity, save_keyring
from ..keys.pki import CA_KEY, create_ca, issue
from ..keys.store import KeyRingStore
from ..keys.tls import load_pair, private_pem
from .helpers import NOW, ring


def encrypted(key: Any) -> bytes:
    """The key as PEM under a passphrase: what the daemon must refuse in one line."""
    return cast(
        bytes,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a passphrase"),
        ),
    )


class PemFiles(TestCase):
    """Every key and certificate privllm makes is written by keys.tls: the same form and modes."""

    def test_every_writer_gives_the_key_0600_and_the_certificate_0644(self) -> None:
        d = os.path.abspath(self.mktemp())
        ensure_private_dir(d)
        ca = create_ca(os.path.join(d, "ca"))
        pairs = [
            (ca, os.path.join(d, "ca", CA_KEY)),
            issue(os.path.join(d, "ca"), "node1", os.path.join(d, "certs")),
            ensure_dev_certificate(d, ["127.0.0.1"]),
        ]
        for cert, key in pairs:
            self.assertEqual((stat.S_IMODE(os.stat(key).st_mode), stat.S_IMODE(os.stat(cert).st_mode)), (0o600, 0o644))
            self.assertEqual(private_pem(serialization.load_pem_private_key(read_secret(key), None)), read_secret(key))
            load_pair(cert, key)
        identity = ensure_identity(d)
        self.assertEqual(private_pem(load_identity(identity)), read_secret(identity))


class SecretFiles(TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())

    def test_a_new_secret_is_never_seen_half_written(self) -> None:
        """Two routers starting together: the second must read the first's whole key, never an
        empty file made a moment ago; a write that fails leaves nothing behind."""
        ensure_private_dir(self.dir)
        path = os.path.join(self.dir, "pow.key")
        real = files._write_all
        seen: list[bool] = []

        def writing(fd: int, data: bytes) -> None:
            seen.append(os.path.lexists(path))
            real(fd, data)

        self.patch(files, "_write_all", writing)
        create_secret(path, b"k" * 32)
        self.assertEqual((seen, read_secret(path)), ([False], b"k" * 32))
        self.assertRaises(FileExistsError, create_secret, path, b"x" * 32)

        def failing(fd: int, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        self.patch(files, "_write_all", failing)
        other = os.path.join(self.dir, "other.key")
        self.assertRaises(OSError, create_secret, other, b"y" * 32)
        self.assertEqual(sorted(os.listdir(self.dir)), ["pow.key"], "no short file, no temporary one")

    def mode(self, path: str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_dir_created_0700(self) -> None:
        ensure_private_dir(self.dir)
        self.assertEqual(self.mode(self.dir), 0o700)

    def test_open_dir_refused(self) -> None:
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.assertRaises(KeyFileError, ensure_private_dir, self.dir)

    def test_write_is_0600_and_atomic(self) -> None:
        ensure_private_dir(self.dir)
        path = os.path.join(self.dir, "k")
        write_secret(path, b"one")
        write_secret(path, b"two")
        self.assertEqual(read_secret(path), b"two")
        self.assertEqual(self.mode(path), 0o600)
        self.assertEqual(os.listdir(self.dir), ["k"])

    def test_readable_by_others_refused(self) -> None:
        ensure_private_dir(self.dir)
        path = os.path.join(self.dir, "k")
        write_secret(path, b"x")
        os.chmod(path, 0o640)
        self.assertRaises(KeyFileError, read_secret, path)
        self.assertRaises(KeyFileError, read_secret, path + ".missing")

    def test_symlink_refused(self) -> None:
        ensure_private_dir(self.dir)
        target = os.path.join(self.dir, "k")
        write_secret(target, b"x")
        os.symlink(target, os.path.join(self.dir, "link"))
        self.assertRaises(KeyFileError, read_secret, os.path.join(self.dir, "link"))

    def test_identity_created_once(self) -> None:
        ensure_private_dir(self.dir)
        path = ensure_identity(self.dir)
        first = load_identity(path).public_key().public_bytes_raw()
        ensure_identity(self.dir)
        self.assertEqual(load_identity(path).public_key().public_bytes_raw(), first)

    def test_an_encrypted_identity_key_is_a_key_file_error(self) -> None:
        ensure_private_dir(self.dir)
        path = ensure_identity(self.dir)
        write_secret(path, encrypted(load_identity(path)))
        with self.assertRaises(KeyFileError) as caught:
            load_identity(path)
        self.assertIn("not an unencrypted PEM private key", str(caught.exception))

    def test_an_encrypted_tls_key_is_a_key_file_error(self) -> None:
        ensure_private_dir(self.dir)
        cert_path, key_path = ensure_dev_certificate(self.dir, ["127.0.0.1"])
        key = serialization.load_pem_private_key(read_secret(key_path), password=None)
        write_secret(key_path, encrypted(key))
        with self.assertRaises(KeyFileError) as caught:
            load_pair(cert_path, key_path)
        self.assertIn("not an unencrypted PEM private key", str(caught.exception))

    def test_keyring_persists_and_corruption_stops(self) -> None:
        ensure_private_dir(self.dir)
        r = ring()
        save_keyring(self.dir, r)
        again = KeyRingStore(self.dir, r.interval, r.overlap).update(NOW)
        self.assertEqual(again.published(NOW), r.published(NOW))
        self.assertEqual(
            [k.secret.to_private_bytes() for k in again.keys], [k.secret.to_private_bytes() for k in r.keys]
        )
        write_secret(os.path.join(self.dir, "hpke-keyring.json"), b"{garbage")
        self.assertRaises(KeyFileError, KeyRingStore(self.dir, r.interval, r.overlap).update, NOW)
        self.assertEqual(read_secret(os.path.join(self.dir, "hpke-keyring.json")), b"{garbage")

    def test_dev_certificate(self) -> None:
        ensure_private_dir(self.dir)
        cert, key = ensure_dev_certificate(self.dir, ["127.0.0.1"])
        self.assertEqual(self.mode(key), 0o600)
        self.assertEqual(self.mode(cert), 0o644)
        self.assertEqual(ensure_dev_certificate(self.dir, ["127.0.0.1"]), (cert, key))
