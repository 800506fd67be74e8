"""Certificates renewed on disk are used for new connections; a broken renewal is ignored."""

from __future__ import annotations

import os

from OpenSSL import SSL
from twisted.trial.unittest import TestCase

from ..keys.pki import create_ca, issue
from ..web.tls import Reloading, ReloadingServerOptions, server_tls_options


class Reload(TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        create_ca(os.path.join(self.dir, "ca"))
        self.cert, self.key = issue(
            os.path.join(self.dir, "ca"), "node1", os.path.join(self.dir, "certs"), ips=["127.0.0.1"]
        )

    def serial(self, options: ReloadingServerOptions) -> int:
        context = options.getContext()
        connection = SSL.Connection(context, None)
        certificate = connection.get_certificate()
        assert certificate is not None
        return int(certificate.get_serial_number())

    def renew(self) -> None:
        issue(os.path.join(self.dir, "ca"), "node1", os.path.join(self.dir, "certs"), ips=["127.0.0.1"])
        for path in (self.cert, self.key):  # make the change visible even within one mtime tick
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    def test_new_certificate_for_new_connections(self) -> None:
        options = ReloadingServerOptions([self.cert, self.key], lambda: server_tls_options(self.cert, self.key, "1.2"))
        first = self.serial(options)
        self.assertEqual(self.serial(options), first)
        self.renew()
        self.assertNotEqual(self.serial(options), first)

    def test_broken_renewal_keeps_the_old_one(self) -> None:
        builds = []

        def build() -> object:
            builds.append(1)
            return server_tls_options(self.cert, self.key, "1.2")

        watched = Reloading([self.cert, self.key], build)
        before = watched.current()
        with open(self.cert, "w") as f:
            f.write("half written")
        self.assertIs(watched.current(), before)
        self.assertEqual(len(builds), 2)  # it tried, failed, and kept serving
