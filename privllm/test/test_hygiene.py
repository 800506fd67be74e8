"""Process hardening, checked in a child process (it changes the whole process irreversibly)."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from ..hygiene import is_dumpable

SCRIPT = """
import resource
from privllm.hygiene import harden, is_dumpable
warning = harden(require_mlock=False)
locked = [l for l in open('/proc/self/status') if l.startswith('VmLck')][0].split()[1]
print(is_dumpable(), resource.getrlimit(resource.RLIMIT_CORE), warning is None, locked)
"""


class Hardening(TestCase):
    def test_child_is_hardened(self) -> None:
        out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
        dumpable, core, locked_ok, locked_kb = out.replace("(0, 0)", "(0,0)").split()
        self.assertEqual((dumpable, core), ("False", "(0,0)"))
        # Root holds CAP_IPC_LOCK (so does the systemd unit); without it mlockall must report failure.
        can_lock = os.geteuid() == 0
        self.assertEqual(locked_ok, str(can_lock))
        if can_lock:
            self.assertGreater(int(locked_kb), 1000)

    def test_required_mlock_without_capability_stops(self) -> None:
        # Without CAP_IPC_LOCK (dropped from the bounding set) and with no memlock allowance.
        script = (
            "import resource; resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))\n"
            "from privllm.hygiene import harden, HygieneError\n"
            "try:\n    harden(require_mlock=True)\nexcept HygieneError as e:\n    print('refused', e)\n"
        )
        argv = [sys.executable, "-c", script]
        if os.geteuid() == 0:
            argv = ["setpriv", "--bounding-set=-ipc_lock", "--", *argv]
        out = subprocess.run(argv, capture_output=True, text=True).stdout
        self.assertTrue(out.startswith("refused mlockall failed"), out)

    def test_this_process_untouched(self) -> None:
        self.assertTrue(is_dumpable())
