"""Client address keys: strict parsing, IPv6 prefixes, mapped IPv4, trusted proxies, and their config."""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import TestCase

from ..config import ConfigError, load_config
from ..protocol.addresses import AddressPolicy, parse_address, parse_network


class Parsing(TestCase):
    def test_only_bare_addresses(self) -> None:
        for text in (
            "",
            "x",
            "1.2.3",
            "01.2.3.4",
            "1.2.3.4:80",
            "[::1]",
            "fe80::1%eth0",
            " 1.2.3.4",
            "\u0661.\u0662.\u0663.\u0664",  # Arabic-Indic digits
            "a" * 99,
        ):
            self.assertIsNone(parse_address(text), text)
        self.assertEqual(str(parse_address("2001:DB8::1")), "2001:db8::1")

    def test_mapped_is_ipv4(self) -> None:
        self.assertEqual(parse_address("::ffff:192.0.2.1"), parse_address("192.0.2.1"))
        self.assertEqual(str(parse_network("::ffff:10.0.0.0/104")), "10.0.0.0/8")
        self.assertEqual(str(parse_network("::ffff:10.1.2.3")), "10.1.2.3/32")

    def test_networks(self) -> None:
        self.assertEqual(str(parse_network("2001:db8::/32")), "2001:db8::/32")
        for text in ("10.0.0.1/8", "nope", "10.0.0.0/33", "fe80::/10%eth0"):
            self.assertRaises(ValueError, parse_network, text)


class Policy(TestCase):
    def test_keys(self) -> None:
        policy = AddressPolicy(ipv6_prefix=56)
        key = policy.key
        self.assertEqual(key(parse_address("192.0.2.1")), "192.0.2.1")  # type: ignore[arg-type]
        self.assertEqual(key(parse_address("2001:db8:0:ff:1::1")), "2001:db8::/56")  # type: ignore[arg-type]
        self.assertEqual(key(parse_address("::ffff:192.0.2.1")), "192.0.2.1")  # type: ignore[arg-type]
        self.assertRaises(ValueError, AddressPolicy, 0)

    def test_trusted(self) -> None:
        policy = AddressPolicy(64, trusted_proxies=["10.0.0.0/8", "2001:db8::/48", "::ffff:192.0.2.9"])
        for text, trusted in (
            ("10.200.0.1", True),
            ("::ffff:10.200.0.1", True),
            ("11.0.0.1", False),
            ("2001:db8:0:1::5", True),
            ("2001:db9::5", False),
            ("192.0.2.9", True),
            ("::a00:1", False),  # 10.0.0.1's bits, but IPv6
        ):
            self.assertEqual(policy.trusted(parse_address(text)), trusted, text)  # type: ignore[arg-type]


class Config(TestCase):
    def load(self, toml: str) -> object:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(toml)
        self.addCleanup(os.unlink, f.name)
        return load_config("dev", f.name, environ={})

    def refused(self, toml: str) -> str:
        with self.assertRaises(ConfigError) as cm:
            self.load(toml)
        return str(cm.exception)

    def test_checked(self) -> None:
        self.assertIn("server.trusted_proxies", self.refused('[server]\ntrusted_proxies = ["10.0.0.1/8"]\n'))
        self.assertIn("server.trusted_proxies", self.refused('[server]\ntrusted_proxies = ["proxy.example"]\n'))
        self.assertIn("replay.future_skew", self.refused("[replay]\nwindow = 10\nfuture_skew = 11\n"))
        self.assertIn(
            "replay.max_entries_per_address",
            self.refused("[replay]\nmax_entries = 100\nmax_entries_per_address = 101\n"),
        )
        proxies = '[server]\ntrusted_proxies = ["10.0.0.0/8", "::ffff:192.0.2.1", "2001:db8::/32"]\n'
        self.assertIn("server.client_address_header", self.refused(proxies))
        self.load(proxies + 'client_address_header = "x-forwarded-for"\n')
