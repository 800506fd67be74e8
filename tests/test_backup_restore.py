"""
Back-up and restore on the real stack (docs/deployment.md, "Back-up and roll-back"): a dev
router's files are backed up with `privllm-admin backup`, its state directory is wiped, and a
new router starts on what `privllm-admin restore` put back. The app that pinned the first
router's identity goes on working with the second; its HPKE keys are new, and their ids lie
past the old router's, so the very app instance that still holds the old key set (cached for
keys.keyset_lifetime) sees unknown_key, fetches the new set and goes on, instead of a
decrypt_failed from a new key under an old id. A restore that lost the identity key is loud:
the dev router makes a new identity and the pinned app refuses it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from privllm.client import PrivllmClient, ProtocolFailure
from privllm.keys.backup import ID_MARGIN, MEMBERS
from privllm.keys.files import ensure_private_dir, write_secret
from privllm.keys.material import IDENTITY_KEY, KEYRING, keyring_json, keyring_path
from privllm.protocol.keyring import KeyRing
from privllm.test.stack import Daemon

ADMIN = os.path.join(os.path.dirname(sys.executable), "privllm-admin")


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 16, "temperature": 0}


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class BackupRestore(TestCase):
    timeout = 300

    def daemon(self, name: str) -> Daemon:
        daemon = Daemon(name=name)
        self.addCleanup(daemon.cleanup)
        return daemon

    def admin(self, command: str, daemon: Daemon, archive: str) -> str:
        """The operator's command, with the daemon's own configuration file."""
        done = subprocess.run(
            [ADMIN, command, "--config", daemon.config_path, "--archive", archive],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def app(self, daemon: Daemon, pin: bytes, trusted_cert: bytes) -> PrivllmClient:
        """An app: it pinned the identity (and trusts the dev certificate) of the first router."""
        client = PrivllmClient(reactor, daemon.url, pin, os.urandom(32), trusted_cert)
        self.addCleanup(client.close)
        return client

    async def backed_up_and_wiped(self) -> tuple[bytes, bytes, set[bytes], str]:
        """A router that served a chat, backed up, stopped and its state directory gone."""
        first = self.daemon("backup-first").start()
        pin, cert = first.pin(), first.cert()
        app = self.app(first, pin, cert)
        self.assertTrue((await app.chat(user("Say hello."))).text.strip())
        hpke = {k.public_key for k in await app.fetch_keys()}
        archive = os.path.join(self.mktemp() + ".tar")
        os.makedirs(os.path.dirname(os.path.abspath(archive)), exist_ok=True)
        self.assertIn(first.state_dir, self.admin("backup", first, archive))
        self.assertEqual(mode(archive), 0o600)
        first.stop()
        shutil.rmtree(first.state_dir)
        return pin, cert, hpke, archive

    def restored(self, archive: str) -> Daemon:
        second = self.daemon("backup-restored")
        self.assertFalse(os.path.lexists(second.state_dir))
        self.admin("restore", second, archive)
        self.assertEqual(mode(second.state_dir), 0o700)
        self.assertEqual(sorted(os.listdir(second.state_dir)), sorted([*MEMBERS, KEYRING]), "no pow.key")
        for name in (*MEMBERS, KEYRING):
            self.assertEqual(mode(os.path.join(second.state_dir, name)), 0o600)
        with open(keyring_path(second.state_dir), "rb") as f:
            self.assertIn(b'"keys": []', f.read(), "only where the ids start, no key of the old ring")
        return second

    async def test_restore_without_identity_is_refused_by_the_pinned_app(self) -> None:
        pin, cert, _, archive = await self.backed_up_and_wiped()
        second = self.restored(archive)
        os.unlink(os.path.join(second.state_dir, IDENTITY_KEY))  # a restore that lost it
        second.start()
        self.assertNotEqual(second.pin(), pin, "dev makes a new identity (prod refuses to start)")
        app = self.app(second, pin, cert)
        with self.assertRaises(ProtocolFailure) as caught:
            await app.chat(user("Say hello."))
        self.assertEqual(str(caught.exception), "key set rejected: signed by a key other than the pinned identity")

    async def test_restored_router_serves_the_pinned_app_with_new_hpke_keys(self) -> None:
        pin, cert, hpke, archive = await self.backed_up_and_wiped()
        second = self.restored(archive).start()
        self.assertEqual(second.pin(), pin)
        app = self.app(second, pin, cert)  # the same pin and certificate the app had
        result = await app.chat(user("Say hello."))
        self.assertTrue(result.text.strip())
        self.assertIn(result.finish_reason, ("stop", "length"))
        keys = await app.fetch_keys()  # verified against the pinned identity
        self.assertTrue(keys)
        self.assertFalse({k.public_key for k in keys} & hpke, "the HPKE keys are new, not restored")

    async def test_the_same_app_instance_chats_across_a_restore(self) -> None:
        router = self.daemon("backup-ids")
        # The old router's ring took ids 0 and 1: what every fresh ring took before rings
        # started at a random id, so what a restored ring without a start point could reuse.
        ensure_private_dir(router.state_dir)
        write_secret(keyring_path(router.state_dir), keyring_json(KeyRing([], 86400, 3600, 255)))
        router.start()
        app = self.app(router, router.pin(), router.cert())
        self.assertTrue((await app.chat(user("Say hello."))).text.strip())
        held = {k.key_id: k.public_key for k in await app.current_keys()}
        self.assertEqual(set(held), {0, 1})
        archive = os.path.join(self.mktemp() + ".tar")
        os.makedirs(os.path.dirname(os.path.abspath(archive)), exist_ok=True)
        self.admin("backup", router, archive)
        router.stop()
        shutil.rmtree(router.state_dir)
        out = self.admin("restore", router, archive)  # the same host, the same address
        router.start()
        # The old router's kept-alive connections died with it (the test blocked the reactor
        # meanwhile, so the pool has not seen them close); the key set stays cached.
        await app.close()
        result = await app.chat(user("Say hello."))  # the same app, its key set still names 0 and 1
        self.assertTrue(result.text.strip())
        new = {k.key_id: k.public_key for k in await app.current_keys()}
        self.assertFalse(set(new) & set(held), "no id of the cached set names a new key")
        first = min(new)
        self.assertIn(
            first, (1 + ID_MARGIN + 1, 1 + 1 + ID_MARGIN + 1), "past 1 by one rotation at most and the margin"
        )
        self.assertIn(f"the new key ring's first key id is {first}", out)
