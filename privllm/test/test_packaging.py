"""setup.cfg lists its packages by hand (find: would drop twisted.plugins): a package missing
from the list is missing from a built wheel, though the editable install never notices."""

from __future__ import annotations

import configparser
import os

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Packages(TestCase):
    def test_every_package_is_listed(self) -> None:
        config = configparser.ConfigParser()
        config.read(os.path.join(ROOT, "setup.cfg"))
        listed = set(config["options"]["packages"].split())
        found = {
            os.path.relpath(directory, ROOT).replace(os.sep, ".")
            for directory, _, files in os.walk(os.path.join(ROOT, "privllm"))
            if "__init__.py" in files
        }
        self.assertEqual(found - listed, set(), "packages a wheel would leave out")
        self.assertIn("twisted.plugins", listed)
