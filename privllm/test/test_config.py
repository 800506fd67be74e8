from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import TestCase

from ..config import ConfigError, load_config
from ..config.schema import Backend
from ..protocol.keyset import MAX_KEYSET_LIFETIME
from ..protocol.suite import POW_MAX_DIFFICULTY

PROD_ENV = {
    "PRIVLLM_SERVER__CERTIFICATE": '"/etc/privllm/tls.crt"',
    "PRIVLLM_SERVER__PRIVATE_KEY": "/etc/privllm/tls.key",
    "PRIVLLM_KEYS__IDENTITY_KEY": "/etc/privllm/identity.key",
}


class Layers(TestCase):
    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".toml")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.addCleanup(os.unlink, path)
        return path

    def error(self, *args, **kw) -> str:
        with self.assertRaises(ConfigError) as cm:
            load_config(*args, **kw)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        return message

    def test_dev_defaults(self) -> None:
        c = load_config("dev", environ={})
        self.assertEqual((c.server.host, c.server.port), ("127.0.0.1", 8443))
        self.assertTrue(c.llama.spawn)
        self.assertEqual(c.server.tls_min_version, "1.2")

    def test_file_then_environment(self) -> None:
        path = self.write('[server]\nport = 9443\ntls_min_version = "1.3"\n[replay]\nwindow = 30\n')
        c = load_config("dev", path, environ={"PRIVLLM_SERVER__PORT": "10443", "OTHER": "x"})
        self.assertEqual(c.server.port, 10443)
        self.assertEqual(c.server.tls_min_version, "1.3")
        self.assertEqual(c.replay.window, 30)

    def test_bad_values_name_the_key(self) -> None:
        self.assertIn("server.port", self.error("dev", environ={"PRIVLLM_SERVER__PORT": "70000"}))
        self.assertIn("server.port", self.error("dev", environ={"PRIVLLM_SERVER__PORT": "high"}))
        self.assertIn("replay.window", self.error("dev", environ={"PRIVLLM_REPLAY__WINDOW": "1"}))
        self.assertIn("server.tls_min_version", self.error("dev", environ={"PRIVLLM_SERVER__TLS_MIN_VERSION": "1.0"}))
        self.assertIn("server.bogus", self.error("dev", environ={"PRIVLLM_SERVER__BOGUS": "1"}))
        self.assertIn("nope", self.error("dev", self.write("[nope]\nx = 1\n"), environ={}))
        self.assertIn("metrics.enabled", self.error("dev", self.write("[metrics]\nenabled = 1\n"), environ={}))
        self.assertIn("--config", self.error("dev", self.write("[server\n"), environ={}))
        self.assertIn("--config", self.error("dev", "/nonexistent/privllm.toml", environ={}))
        self.assertIn("env", self.error("staging", environ={}))

    def test_prod_requires_explicit_secrets(self) -> None:
        self.assertIn("server.certificate", self.error("prod", environ={}))
        c = load_config("prod", environ=PROD_ENV)
        self.assertEqual(c.server.private_key, "/etc/privllm/tls.key")
        self.assertFalse(c.llama.spawn)
        self.assertIn("llama.spawn", self.error("prod", environ={**PROD_ENV, "PRIVLLM_LLAMA__SPAWN": "true"}))

    def test_pins(self) -> None:
        mtls = {
            "PRIVLLM_BACKEND__URLS": '["https://10.0.0.2:8443"]',
            "PRIVLLM_BACKEND__CA": "/ca.crt",
            "PRIVLLM_BACKEND__CLIENT_CERTIFICATE": "/r.crt",
            "PRIVLLM_BACKEND__CLIENT_KEY": "/r.key",
        }
        pin = "https://10.0.0.2:8443=" + "A" * 43 + "="
        self.assertEqual(
            load_config("dev", environ={**mtls, "PRIVLLM_BACKEND__PINS": f'["{pin}"]'}).backend.pins, [pin]
        )
        for bad in ("https://10.0.0.3:8443=AAAA", "no-equals-sign", "https://10.0.0.2:8443="):
            self.assertIn("backend.pins", self.error("dev", environ={**mtls, "PRIVLLM_BACKEND__PINS": f'["{bad}"]'}))

    def test_pins_keyed_as_the_tls_policy_looks_them_up(self) -> None:
        """Twisted's Agent asks for ("host", port) with no brackets and the port filled in: a pin
        keyed by the URL's netloc ("[::1]:8443", "node.example") would never be found, so never checked."""
        urls = ["https://10.0.0.2:8443", "https://[::1]:8443", "https://Node.example", "https://n2:99999"]
        backend = Backend(urls=urls, pins=[f"{url}=P{i}=" for i, url in enumerate(urls[:3])])
        self.assertEqual(backend.pins_by_host(), {"10.0.0.2:8443": "P0=", "::1:8443": "P1=", "node.example:443": "P2="})
        for bad in (
            [f"{urls[3]}=P"],
            ["https://10.0.0.2:8443"],
            ["https://10.0.0.2:8443=P", "https://10.0.0.2:8443/=Q"],
        ):
            self.assertRaises(ValueError, Backend(urls=[*urls, "https://10.0.0.2:8443/"], pins=bad).pins_by_host)

    def test_examples_load(self) -> None:
        docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples")
        router = load_config("prod", os.path.join(docs, "router.toml"), environ={})
        self.assertEqual(len(router.backend.urls), 2)
        node = load_config("prod", os.path.join(docs, "node.toml"), environ={})
        self.assertEqual(node.server.allowed_clients, ["router"])

    def test_backend_url_shape(self) -> None:
        self.assertIn("backend.urls", self.error("dev", environ={"PRIVLLM_BACKEND__URLS": '["http://x"]'}))
        self.assertIn("backend.ca", self.error("dev", environ={"PRIVLLM_BACKEND__URLS": '["https://10.0.0.2:8443"]'}))
        self.assertIn("backend.urls", self.error("dev", environ={"PRIVLLM_BACKEND__URLS": '"unix:///x"'}))


class Hostile(TestCase):
    """A configuration file or environment built to break the parser ends as one ConfigError line."""

    def error(self, text: str | bytes | None = None, environ: dict[str, str] | None = None) -> str:
        path = None
        if text is not None:
            fd, path = tempfile.mkstemp(suffix=".toml")
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode() if isinstance(text, str) else text)
            self.addCleanup(os.unlink, path)
        with self.assertRaises(ConfigError) as cm:
            load_config("dev", path, environ=environ or {})
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertLess(len(message), 300)
        return message

    def test_deep_nesting(self) -> None:
        self.assertIn("nested too deeply", self.error("[server]\nport = " + "[" * 1100 + "]" * 1100 + "\n"))
        self.assertIn("nested too deeply", self.error("x = " + "{a=" * 1100 + "1" + "}" * 1100 + "\n"))

    def test_huge_values(self) -> None:
        self.assertIn("number is too long", self.error("[server]\nport = 1" + "0" * 5000 + "\n"))
        self.assertIn("server.port", self.error("[server]\nport = 1e400\n"))
        self.assertIn("server.request_read_timeout", self.error("[server]\nrequest_read_timeout = nan\n"))
        self.assertIn("larger than", self.error("# " + "x" * (1 << 16) + "\n"))

    def test_long_dotted_keys_refused_before_parsing(self) -> None:
        self.assertIn("dots", self.error("a." * 20000 + "b = 1\n"))
        self.assertIn("dots", self.error("[" + "a." * 20000 + "b]\n"))

    def test_bytes_and_keys_that_are_not_text(self) -> None:
        self.assertIn("not UTF-8", self.error(b'[server]\nhost = "\xff\xfe"\n'))
        message = self.error('[server]\n"bad\\nkey\\u001b[31m" = 1\n')
        self.assertIn("unknown key", message)
        self.assertNotIn("\x1b", message)

    def test_hostile_environment(self) -> None:
        self.assertIn("server.port", self.error(environ={"PRIVLLM_SERVER__PORT": "[" * 1100 + "]" * 1100}))
        self.assertIn("server.port", self.error(environ={"PRIVLLM_SERVER__PORT": "9" * 5000}))
        self.assertIn("server.host", self.error(environ={"PRIVLLM_SERVER__HOST": "x" * 5000}))

    def test_pow_and_key_set_bounds(self) -> None:
        """The router may not ask for more proof of work than clients do; key sets live 900 s to a day."""
        self.assertIn(
            "pow.max_difficulty", self.error(environ={"PRIVLLM_POW__MAX_DIFFICULTY": str(POW_MAX_DIFFICULTY + 1)})
        )
        self.assertIn(
            "pow.base_difficulty", self.error(environ={"PRIVLLM_POW__BASE_DIFFICULTY": str(POW_MAX_DIFFICULTY + 1)})
        )
        self.assertEqual(load_config("dev", environ={}).pow.max_difficulty, POW_MAX_DIFFICULTY)
        self.assertIn("keys.keyset_lifetime", self.error(environ={"PRIVLLM_KEYS__KEYSET_LIFETIME": "899"}))
        self.assertIn(
            "keys.keyset_lifetime", self.error(environ={"PRIVLLM_KEYS__KEYSET_LIFETIME": str(MAX_KEYSET_LIFETIME + 1)})
        )
        self.assertEqual(load_config("dev", environ={}).keys.keyset_lifetime, 3600)

    def test_state_key_rotation_outlives_what_redis_remembers(self) -> None:
        environ = {
            "PRIVLLM_STATE__BACKEND": '"redis"',
            "PRIVLLM_STATE__URL": '"unix:///run/redis.sock"',
            "PRIVLLM_STATE__KEY_ROTATION": "60",
            "PRIVLLM_REPLAY__WINDOW": "300",
        }
        with self.assertRaises(ConfigError) as cm:
            load_config("dev", environ=environ)
        self.assertIn("state.key_rotation", str(cm.exception))
        environ["PRIVLLM_REPLAY__WINDOW"] = "30"
        with self.assertRaises(ConfigError):  # pow.ttl is 120 by default
            load_config("dev", environ=environ)
        environ["PRIVLLM_POW__TTL"] = "30"
        self.assertEqual(load_config("dev", environ=environ).state.key_rotation, 60)

    def test_proxy_protocol_and_trusted_proxies_refused_together(self) -> None:
        """Behind the PROXY protocol a forwarding header would be the client's own words."""
        environ = {
            "PRIVLLM_SERVER__PROXY_PROTOCOL": "true",
            "PRIVLLM_SERVER__PROXY_PROTOCOL_FROM": '["10.0.0.5"]',
            "PRIVLLM_SERVER__TRUSTED_PROXIES": '["10.0.0.5"]',
            "PRIVLLM_SERVER__CLIENT_ADDRESS_HEADER": '"X-Forwarded-For"',
        }
        with self.assertRaises(ConfigError) as cm:
            load_config("dev", environ=environ)
        self.assertIn("server.trusted_proxies", str(cm.exception))


class ProtocolVersions(TestCase):
    def error(self, environ: dict[str, str]) -> str:
        with self.assertRaises(ConfigError) as cm:
            load_config("dev", environ=environ)
        return str(cm.exception)

    def test_relays_are_addresses_or_cidrs(self) -> None:
        for bad in ('["relay.example"]', '["10.0.0.1/33"]', '["10.0.0.1/8"]', '["fe80::1%eth0"]', '"10.0.0.1"', "[1]"):
            self.assertIn("ohttp.relays", self.error({"PRIVLLM_OHTTP__RELAYS": bad}), bad)

    def test_a_relay_cannot_also_be_a_trusted_proxy(self) -> None:
        environ = {
            "PRIVLLM_OHTTP__RELAYS": '["10.0.0.0/24"]',
            "PRIVLLM_SERVER__TRUSTED_PROXIES": '["10.0.0.0/24"]',
            "PRIVLLM_SERVER__CLIENT_ADDRESS_HEADER": '"X-Forwarded-For"',
        }
        self.assertIn("ohttp.relays", self.error(environ))
        environ["PRIVLLM_SERVER__TRUSTED_PROXIES"] = '["10.0.1.0/24"]'
        self.assertEqual(load_config("dev", environ=environ).ohttp.relays, ["10.0.0.0/24"])

    def test_defaults_and_values(self) -> None:
        config = load_config("dev", environ={})
        self.assertTrue(config.protocol.accept_v1)
        self.assertEqual(config.ohttp.relays, [])
        environ = {"PRIVLLM_PROTOCOL__ACCEPT_V1": "false", "PRIVLLM_OHTTP__RELAYS": '["192.0.2.7", "2001:db8::/48"]'}
        config = load_config("dev", environ=environ)
        self.assertFalse(config.protocol.accept_v1)
        self.assertEqual(config.ohttp.relays, ["192.0.2.7", "2001:db8::/48"])
        self.assertIn("protocol.accept_v1", self.error({"PRIVLLM_PROTOCOL__ACCEPT_V1": '"no"'}))
        self.assertIn("ohttp", self.error({"PRIVLLM_OHTTP__RELAY": "[]"}))

    def test_relay_budgets(self) -> None:
        ohttp = load_config("dev", environ={}).ohttp
        self.assertEqual(
            (ohttp.relay_rate, ohttp.relay_burst, ohttp.relay_streams, ohttp.relay_replay_entries),
            (200.0, 2000, 256, 200_000),
        )
        for key, bad in (
            ("RELAY_RATE", "0"),
            ("RELAY_RATE", '"fast"'),
            ("RELAY_BURST", "0"),
            ("RELAY_BURST", "1.5"),
            ("RELAY_STREAMS", "0"),
            ("RELAY_REPLAY_ENTRIES", "1"),
        ):
            self.assertIn(f"ohttp.{key.lower()}", self.error({f"PRIVLLM_OHTTP__{key}": bad}), bad)
        # a relay's share of the replay window is at most the window
        environ = {"PRIVLLM_REPLAY__MAX_ENTRIES": "100000"}
        self.assertIn("ohttp.relay_replay_entries", self.error(environ))
        environ["PRIVLLM_OHTTP__RELAY_REPLAY_ENTRIES"] = "100000"
        self.assertEqual(load_config("dev", environ=environ).ohttp.relay_replay_entries, 100_000)
        # above load.max_streams the global cap binds first: allowed
        environ = {"PRIVLLM_LOAD__MAX_STREAMS": "3", "PRIVLLM_OHTTP__RELAY_STREAMS": "1000"}
        self.assertEqual(load_config("dev", environ=environ).ohttp.relay_streams, 1000)
