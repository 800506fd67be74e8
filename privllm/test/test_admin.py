"""privllm-admin: show, rotate and pin, against a state directory made for the test."""

from __future__ import annotations

import datetime
import os
import time

from twisted.trial.unittest import TestCase


class Admin(TestCase):
    def test_show_rotate_and_pin(self) -> None:
        import contextlib
        import io

        from .. import admin

        state = os.path.abspath(self.mktemp())
        env = {"PRIVLLM_KEYS__STATE_DIR": state}
        os.environ.update(env)
        self.addCleanup(lambda: [os.environ.pop(k) for k in env])
        from ..keys.files import ensure_private_dir
        from ..keys.material import ensure_dev_certificate, ensure_identity

        ensure_private_dir(state)
        ensure_identity(state)
        cert, _ = ensure_dev_certificate(state, ["127.0.0.1"])
        out = io.StringIO()
        started = int(time.time())
        with contextlib.redirect_stdout(out):
            self.assertEqual(admin.main(["show"]), 0)
            self.assertEqual(admin.main(["rotate"]), 0)
            self.assertEqual(admin.main(["rotate", "--revoke"]), 0)
            self.assertEqual(admin.main(["pin", "--cert", cert]), 0)
        text = out.getvalue()
        self.assertIn("identity key (pin this in the app): ", text)
        self.assertEqual(text.count(" current "), 3)
        self.assertIn(" previous ", text.split("rotated")[1])
        revoked = text.split("rotated")[2]
        self.assertNotIn(" previous ", revoked, "--revoke drops every older key")
        shown = revoked.split("naming the old keys after ")[1].split()[0]
        when = datetime.datetime.strptime(shown, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
        bound = 60 + 3600 + 60  # adoption, the default key set lifetime, the clock skew
        self.assertTrue(started + bound <= when <= time.time() + bound, shown)
        from ..keys.tls import load_chain, spki_pin

        self.assertEqual(text.strip().splitlines()[-1], spki_pin(load_chain(cert)[0]))
