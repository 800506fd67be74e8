"""Certificates renewed on disk are used for new connections; a broken renewal is ignored."""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from ..keys.files import KeyFileError
from ..keys.pki import create_ca, issue
from ..keys.tls import Reloading, load_pair
from ..upstream.mtls import MutualTLSPolicy
from ..web.tls import ReloadingServerOptions, server_tls_options


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

    def test_a_key_that_does_not_match_keeps_the_old_one(self) -> None:
        """The certificate renewed, the key not yet (or another one): each half parses alone,
        and the mismatch shows only when a context is made. That must not cost the listener
        its next connections."""
        options = ReloadingServerOptions([self.cert, self.key], lambda: server_tls_options(self.cert, self.key, "1.2"))
        first = self.serial(options)
        self.swap_key()
        self.assertEqual(self.serial(options), first, "still serving the last good pair")

    def test_a_bad_renewal_is_logged_once_and_not_rebuilt_on_every_connection(self) -> None:
        builds: list[int] = []

        def build() -> object:
            builds.append(1)
            return load_pair(self.cert, self.key)

        watched = Reloading([self.cert, self.key], build)
        before = watched.current()
        self.swap_key()
        logged: list[dict[str, object]] = []
        observer: Any = logged.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for _ in range(5):
            self.assertIs(watched.current(), before)
        self.assertEqual(len(builds), 2, "tried once for the change, not once per connection")
        warned = [e for e in logged if e.get("log_namespace") == "privllm.keys.tls"]
        self.assertEqual(len(warned), 1)
        self.assertIn("is not the key of certificate", str(warned[0]["reason"]))
        self.renew()  # the operator fixes it: used at once
        self.assertIsNot(watched.current(), before)

    def test_the_router_keeps_its_client_pair_when_the_key_does_not_match(self) -> None:
        policy = MutualTLSPolicy(os.path.join(self.dir, "ca", "ca.crt"), self.cert, self.key)
        self.swap_key()
        creator = policy.creatorForNetloc(b"127.0.0.1", 8443)
        wrapped: Any = Factory.forProtocol(Protocol)
        tls = TLSMemoryBIOFactory(creator, True, wrapped).buildProtocol(None)
        creator.clientConnectionForTLS(tls)  # raised SSL.Error: every connection to a node failed
        self.assertRaises(KeyFileError, load_pair, self.cert, self.key)

    def swap_key(self) -> None:
        _, other_key = issue(os.path.join(self.dir, "ca"), "other", os.path.join(self.dir, "other"))
        with open(other_key, "rb") as src, open(self.key, "wb") as dst:
            dst.write(src.read())
        st = os.stat(self.key)
        os.utime(self.key, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


class Refused(Exception):
    """The server side of an in-memory handshake gave up."""


class Offered(TestCase):
    """Point 15: TLS 1.2 only with ECDHE and AEAD suites; TLS 1.3 as OpenSSL has it."""

    def setUp(self) -> None:
        d = os.path.abspath(self.mktemp())
        create_ca(os.path.join(d, "ca"))
        cert, key = issue(os.path.join(d, "ca"), "router", os.path.join(d, "certs"), ips=["127.0.0.1"])
        self.server = server_tls_options(cert, key, "1.2").getContext()

    def handshake(self, version: int, ciphers: bytes = b"ALL:@SECLEVEL=0") -> str:
        """An in-memory handshake with a client of one version offering only `ciphers` (TLS 1.2 and
        older); the suite agreed, or Refused if the server would not."""
        client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        client_context.set_min_proto_version(version)
        client_context.set_max_proto_version(version)
        client_context.set_cipher_list(ciphers)
        server, client = SSL.Connection(self.server, None), SSL.Connection(client_context, None)
        server.set_accept_state()
        client.set_connect_state()
        for _ in range(10):  # a handshake is a few flights
            for a, b in ((client, server), (server, client)):
                try:
                    a.do_handshake()
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    if a is server:
                        raise Refused() from e
                    raise
                try:
                    b.bio_write(a.bio_read(65536))
                except SSL.WantReadError:
                    pass
        return str(client.get_cipher_name())

    def test_cbc_refused_on_tls12(self) -> None:
        for suite in (b"ECDHE-ECDSA-AES128-SHA", b"ECDHE-ECDSA-AES256-SHA384", b"ECDHE-ECDSA-AES128-CCM"):
            with self.assertRaises(Refused, msg=suite):
                self.handshake(SSL.TLS1_2_VERSION, suite)

    def test_aead_accepted(self) -> None:
        for suite in (
            b"ECDHE-ECDSA-AES128-GCM-SHA256",
            b"ECDHE-ECDSA-AES256-GCM-SHA384",
            b"ECDHE-ECDSA-CHACHA20-POLY1305",
        ):
            self.assertEqual(self.handshake(SSL.TLS1_2_VERSION, suite), suite.decode())
        self.assertEqual(self.handshake(SSL.TLS1_3_VERSION), "TLS_AES_256_GCM_SHA384")

    def test_older_versions_refused(self) -> None:
        for version in (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION):
            with self.assertRaises(Refused):
                self.handshake(version)
