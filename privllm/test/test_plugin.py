from __future__ import annotations

import unittest

from twisted.application.service import IServiceMaker
from twisted.logger import LogEvent, Logger, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.trial.reporter import TestResult
from twisted.trial.unittest import TestCase

from .. import logs, tap


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
        # The real install() would leave `sanitize` on the global publisher for the rest of the
        # process, stripping failures from every later test's trial observer.
        installed: list[None] = []
        self.patch(logs, "install", lambda: installed.append(None))
        options = tap.Options()
        options.parseOptions(["--env", "prod"])
        with self.assertRaises(SystemExit) as cm:
            tap.makeService(options)
        self.assertEqual(str(cm.exception.code).count("\n"), 0)
        self.assertIn("privllm: config server.certificate", str(cm.exception.code))
        self.assertEqual(installed, [None])  # the allow-list goes in before the config is read


class LeavesLoggingAsFound(TestCase):
    """Under trial -j each test adds trial's error observer anew, after any observer an
    earlier test left behind: a leftover `sanitize` hid every later logged failure, and
    flushLoggedErrors() == [] checks passed without checking anything."""

    def test_a_later_observer_still_sees_failures(self) -> None:
        result = TestResult()
        unittest.defaultTestLoader.loadTestsFromTestCase(Plugin).run(result)
        self.assertTrue(result.wasSuccessful(), result.errors + result.failures)
        seen: list[LogEvent] = []
        globalLogPublisher.addObserver(seen.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)  # type: ignore[arg-type]
        try:
            raise RuntimeError("logged")
        except RuntimeError:
            Logger().failure("failed")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(["log_failure" in event for event in seen], [True])
