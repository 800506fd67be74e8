"""twistd itself: prod refuses unsafe or missing secrets with one clear line, and starts nothing."""

from __future__ import annotations

import os
import subprocess
import tempfile

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial.unittest import TestCase

from privllm.keys.files import ensure_private_dir
from privllm.keys.material import ensure_dev_certificate
from privllm.keys.tls import private_pem
from privllm.test.stack import TWISTD, free_port


class ProdStart(TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="privllm-prod-")
        secrets = os.path.join(self.dir, "secrets")
        ensure_private_dir(secrets)
        self.cert, self.key = ensure_dev_certificate(secrets, ["127.0.0.1"])
        self.identity = os.path.join(secrets, "identity.key")
        pem = private_pem(Ed25519PrivateKey.generate())
        with open(os.open(self.identity, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(pem)

    def start(self) -> subprocess.CompletedProcess[str]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PRIVLLM_")},
            "PRIVLLM_SERVER__HOST": '"127.0.0.1"',
            "PRIVLLM_SERVER__PORT": str(free_port()),
            "PRIVLLM_METRICS__PORT": str(free_port()),
            "PRIVLLM_SERVER__CERTIFICATE": self.cert,
            "PRIVLLM_SERVER__PRIVATE_KEY": self.key,
            "PRIVLLM_KEYS__IDENTITY_KEY": self.identity,
            "PRIVLLM_KEYS__STATE_DIR": os.path.join(self.dir, "state"),
            "PRIVLLM_BACKEND__URLS": '["unix:///nonexistent/llama.sock"]',
        }
        return subprocess.run(
            [TWISTD, "--pidfile=", "-n", "privllm", "--env", "prod"],
            capture_output=True, text=True, timeout=60, env=env, cwd=self.dir,
        )  # fmt: skip

    def assertRefused(self, done: subprocess.CompletedProcess[str], words: str) -> None:
        self.assertNotEqual(done.returncode, 0)
        last = done.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("privllm: "), done.stderr)
        self.assertIn(words, last)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "state", "hpke-keyring.json")))

    def test_key_readable_by_group(self) -> None:
        os.chmod(self.key, 0o640)
        self.assertRefused(self.start(), "accessible by group or others")

    def test_identity_missing(self) -> None:
        os.unlink(self.identity)
        self.assertRefused(self.start(), "missing")
