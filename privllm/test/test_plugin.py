from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import TestCase

from .. import tap


class Plugin(TestCase):
    def test_found_by_twistd(self) -> None:
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("privllm", makers)
        self.assertIs(makers["privllm"].options, tap.Options)

    def test_options(self) -> None:
        options = tap.Options()
        options.parseOptions(["--env", "prod", "--config", "/etc/privllm/privllm.toml"])
        self.assertEqual((options["env"], options["config"]), ("prod", "/etc/privllm/privllm.toml"))

    def test_bad_config_exits_with_one_line(self) -> None:
        options = tap.Options()
        options.parseOptions(["--env", "prod"])
        with self.assertRaises(SystemExit) as cm:
            tap.makeService(options)
        self.assertEqual(str(cm.exception.code).count("\n"), 0)
        self.assertIn("privllm: config server.certificate", str(cm.exception.code))
