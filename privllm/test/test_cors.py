"""Cross-origin answers: the allow-list's decisions, the configuration that feeds it, and
the headers on the wire (preflight, event stream, errors)."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from ..config.load import ConfigError, load_config
from ..protocol.admission import Admission
from ..protocol.cors import KEYS_EXPOSED, MAX_ORIGIN, OHTTP_HEADERS, CorsPolicy, check_origin
from ..protocol.response import ResponseReader
from ..protocol.v2.admission import AdmissionV2
from ..protocol.v2.keys import HEADERS as KEYS_HEADERS
from ..protocol.v2.keys import GatewayKeys, SignedKeyConfigs, key_config, sign_key_configs
from ..state.gate import AdmissionGate
from ..state.memory import MemoryState
from ..web.app import RouterApp
from ..web.metrics import RouterMetrics
from ..web.request import PrivllmSite
from .fakes import FakeResponse, FakeUpstream
from .helpers import FINISH, NOW, current_key, delta, limits, pool_of, ring, sealed_request, stream_settings

ALLOWED = "https://app.example"
IDENTITY = Ed25519PrivateKey.generate()
CORS_HEADERS = (b"access-control-", b"vary")


def names(headers: tuple[tuple[bytes, bytes], ...]) -> dict[bytes, bytes]:
    return dict(headers)


class Answers(TestCase):
    policy = CorsPolicy([ALLOWED, "https://other.example:8443"])

    def test_hostile_origins_get_no_allow_origin(self) -> None:
        for origin in (
            [b"null"],
            [b"https://app.example/"],
            [b"https://app.example/path"],
            [b"https://APP.example"],
            [b"HTTPS://app.example"],
            [b"https://app.example.evil.com"],
            [b"https://evil.app.example"],
            [b"http://app.example"],
            [b"https://app.example:443"],
            [b"https://other.example"],  # the allowed one has a port
            [b"*"],
            [b""],
            [b" https://app.example"],
            [b"https://app.example", b"https://app.example"],  # two Origin headers: no browser's
            [b"https://app.example", b"https://evil.example"],
            [b"https://app.example" + b"a" * 100_000],
            [],
        ):
            self.assertEqual(self.policy.answer(origin), ((b"vary", b"Origin"),), origin[:1])

    def test_allowed_origin_named_back_never_a_wildcard_nor_credentials(self) -> None:
        for origin in (b"https://app.example", b"https://other.example:8443"):
            headers = names(self.policy.answer([origin]))
            self.assertEqual(
                headers,
                {
                    b"vary": b"Origin",
                    b"access-control-allow-origin": origin,
                    b"access-control-expose-headers": b"retry-after, date",
                },
            )

    def test_no_origin_is_not_cross_origin(self) -> None:
        self.assertEqual(self.policy.answer(None), ((b"vary", b"Origin"),))

    def test_empty_allow_list_adds_nothing(self) -> None:
        empty = CorsPolicy(())
        self.assertFalse(empty.enabled)
        self.assertEqual(empty.answer([b"https://app.example"]), ())
        self.assertFalse(empty.is_preflight([b"https://app.example"], [b"POST"]))


class Preflights(TestCase):
    policy = CorsPolicy([ALLOWED])
    origin = [ALLOWED.encode()]

    def refused(self, origin: Any, method: Any, headers: Any) -> None:
        answer = self.policy.preflight(origin, method, headers)
        self.assertFalse(answer.allowed)
        self.assertEqual(answer.headers, ((b"vary", b"Origin"),), (origin, method, headers))

    def test_hostile_preflights_refused(self) -> None:
        for method in ([b"PUT"], [b"DELETE"], [b"post"], [b"GET"], [b"POST", b"POST"], [b"POST, PUT"], []):
            self.refused(self.origin, method, [b"content-type"])
        for headers in (
            [b"authorization"],
            [b"content-type, authorization"],
            [b"content-type,x-requested-with"],
            [b"cookie"],
            [b"content-type", b"content-type"],  # two header lines: no browser's
            [b"content-type" + b"," * 2000],
        ):
            self.refused(self.origin, [b"POST"], headers)
        for origin in ([b"null"], [b"https://app.example.evil.com"], [b"http://app.example"], self.origin * 2, None):
            self.refused(origin, [b"POST"], [b"content-type"])

    def test_not_a_preflight_without_origin_or_method(self) -> None:
        self.assertFalse(self.policy.is_preflight(None, [b"POST"]))
        self.assertFalse(self.policy.is_preflight(self.origin, None))
        self.assertTrue(self.policy.is_preflight([b"null"], [b"PUT"]))  # a preflight, to refuse

    def test_the_chat_preflight_allowed(self) -> None:
        for headers in ([b"content-type"], [b"Content-Type"], [b" content-type , "], None):
            answer = self.policy.preflight(self.origin, [b"POST"], headers)
            self.assertTrue(answer.allowed, headers)
            self.assertEqual(
                names(answer.headers),
                {
                    b"vary": b"Origin",
                    b"access-control-allow-origin": b"https://app.example",
                    b"access-control-allow-methods": b"POST",
                    b"access-control-allow-headers": b"content-type",
                    b"access-control-max-age": b"600",
                },
            )


class OhttpPreflights(TestCase):
    """v2's POST /api/ohttp: the same rules, with `privllm-pow` the one header more."""

    policy = CorsPolicy([ALLOWED])
    origin = [ALLOWED.encode()]

    def refused(self, origin: Any, method: Any, headers: Any, route: frozenset[bytes] = OHTTP_HEADERS) -> None:
        answer = self.policy.preflight(origin, method, headers, route)
        self.assertFalse(answer.allowed, (origin, method, headers))
        self.assertEqual(answer.headers, ((b"vary", b"Origin"),), (origin, method, headers))

    def test_hostile_preflights_refused(self) -> None:
        for origin in ([b"https://evil.example"], [b"null"], [b"https://app.example.evil.com"], self.origin * 2, None):
            self.refused(origin, [b"POST"], [b"content-type,privllm-pow"])
        for method in ([b"PUT"], [b"GET"], [b"post"], [b"POST", b"POST"], []):
            self.refused(self.origin, method, [b"content-type"])
        for headers in (
            [b"content-type,privllm-pow,authorization"],
            [b"privllm-pow, x-requested-with"],
            [b"privllm-pow-extra"],
            [b"content-type", b"privllm-pow"],  # two header lines: no browser's
        ):
            self.refused(self.origin, [b"POST"], headers)

    def test_v1_route_does_not_take_the_pow_header(self) -> None:
        self.refused(self.origin, [b"POST"], [b"content-type,privllm-pow"], frozenset({b"content-type"}))

    def test_the_ohttp_preflight_allowed(self) -> None:
        for headers in ([b"content-type"], [b"content-type,privllm-pow"], [b"Privllm-Pow, Content-Type"], None):
            answer = self.policy.preflight(self.origin, [b"POST"], headers, OHTTP_HEADERS)
            self.assertTrue(answer.allowed, headers)
            self.assertEqual(
                names(answer.headers),
                {
                    b"vary": b"Origin",
                    b"access-control-allow-origin": b"https://app.example",
                    b"access-control-allow-methods": b"POST",
                    b"access-control-allow-headers": b"content-type, privllm-pow",
                    b"access-control-max-age": b"600",
                },
            )

    def test_key_configurations_expose_their_signature(self) -> None:
        self.assertEqual(self.policy.answer([b"https://evil.example"], KEYS_EXPOSED), ((b"vary", b"Origin"),))
        exposed = names(self.policy.answer(self.origin, KEYS_EXPOSED))[b"access-control-expose-headers"]
        self.assertEqual(exposed.split(b", "), [b"retry-after", b"date", *KEYS_HEADERS])


class Configuration(TestCase):
    def load(self, origins: list[str], env: str = "dev") -> Any:
        environ = {"PRIVLLM_SERVER__CORS_ORIGINS": json.dumps(origins), "PRIVLLM_KEYS__STATE_DIR": "/tmp/x"}
        if env == "prod":
            environ.update(
                PRIVLLM_SERVER__CERTIFICATE="c",
                PRIVLLM_SERVER__PRIVATE_KEY="k",
                PRIVLLM_BACKEND__URLS='["unix:///run/llama.sock"]',
            )
        return load_config(env, environ=environ)

    def test_hostile_entries_refused(self) -> None:
        for entry in (
            "*",
            "null",
            "https://*.example",
            "https://app.example/",
            "https://app.example/path",
            "https://app.example?q",
            "https://app.example#f",
            "https://App.example",
            "HTTPS://app.example",
            "https://app.example:443",
            "https://app.example:0",
            "https://app.example:65536",
            "https://app.example:080",
            "https://user@app.example",
            "https://-app.example",
            "https://app..example",
            "https://[::1]",
            "ftp://app.example",
            "app.example",
            "http://app.example",
            "https://bücher.example",
            "https://" + "a" * MAX_ORIGIN,
        ):
            with self.assertRaises(ConfigError, msg=entry) as caught:
                self.load([entry])
            self.assertIn("server.cors_origins", str(caught.exception))
        self.assertIn("wildcard", str(self.assertRaises(ConfigError, self.load, ["*"])))

    def test_http_only_for_loopback_in_dev(self) -> None:
        self.assertEqual(self.load(["http://localhost:5173"]).server.cors_origins, ["http://localhost:5173"])
        self.assertIsNone(check_origin("http://127.0.0.1:8080", allow_http_loopback=True))
        self.assertIsNotNone(check_origin("http://localhost:5173", allow_http_loopback=False))
        self.assertRaises(ConfigError, self.load, ["http://localhost:5173"], "prod")
        self.assertRaises(ConfigError, self.load, ["http://localhost.evil.com"])

    def test_good_entries_and_default(self) -> None:
        origins = ["https://app.example", "https://xn--bcher-kva.example:8443", "https://10.0.0.1"]
        self.assertEqual(self.load(origins, "prod").server.cors_origins, origins)
        self.assertEqual(load_config("dev", environ={}).server.cors_origins, [])
        self.assertRaises(ConfigError, self.load, ["https://app.example"] * 2)


class Wire(TestCase):
    """Requests through PrivllmSite and RouterApp, as test_web drives them."""

    origins: tuple[str, ...] = ()
    v2 = True

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.ring = ring()
        self.upstream = FakeUpstream()
        state = MemoryState(limits(address_rate=0.01, address_burst=1))
        admission = Admission(self.ring, 65536, state.limits.replay_window, state.limits.replay_future_skew)
        gate = AdmissionGate(admission, state, AdmissionV2(admission, GatewayKeys(self.ring).accepting))
        app = RouterApp(
            clock=self.clock,
            gate=gate,
            keyset=lambda: b'{"v":1}',
            pool=pool_of(self.upstream),
            metrics=RouterMetrics(),
            hsts_max_age=100,
            settings=stream_settings(keepalive=15, idle_timeout=60),
            cors=CorsPolicy(self.origins),
            ohttp_keys=self.ohttp_keys if self.v2 else None,
        )
        self.site = PrivllmSite(app.resource(), 65536, reactor=self.clock)

    def ohttp_keys(self) -> SignedKeyConfigs:
        now = int(self.clock.seconds())
        configs = [key_config(k.key_id, k.public_key) for k in self.ring.published(now)]
        return sign_key_configs(configs, now, now + 3600, IDENTITY)

    def exchange(self, data: bytes) -> bytes:
        peer = IPv4Address("TCP", "192.0.2.7", 1234)
        protocol = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        return transport.value()

    def chat(self, body: bytes, origin: bytes = b"https://app.example") -> bytes:
        return self.exchange(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (origin, len(body), body)
        )

    def preflight(
        self, origin: bytes, method: bytes = b"POST", headers: bytes = b"content-type", path: bytes = b"/api/chat"
    ) -> bytes:
        return self.exchange(
            b"OPTIONS %s HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\nAccess-Control-Request-Method: %s\r\n"
            b"Access-Control-Request-Headers: %s\r\n\r\n" % (path, origin, method, headers)
        )

    def head(self, reply: bytes) -> tuple[bytes, dict[bytes, bytes]]:
        head = reply.split(b"\r\n\r\n", 1)[0]
        status, *lines = head.split(b"\r\n")
        return status, {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}

    def assertSecure(self, headers: dict[bytes, bytes]) -> None:
        self.assertEqual(headers[b"strict-transport-security"], b"max-age=100; includeSubDomains")
        self.assertEqual(headers[b"x-content-type-options"], b"nosniff")
        self.assertNotIn(b"access-control-allow-credentials", headers)


class OnTheWire(Wire):
    origins = (ALLOWED,)

    def test_hostile_preflights_get_403_and_no_cors_header(self) -> None:
        for origin, method, headers in (
            (b"https://evil.example", b"POST", b"content-type"),
            (b"null", b"POST", b"content-type"),
            (b"https://app.example", b"PUT", b"content-type"),
            (b"https://app.example", b"POST", b"content-type, authorization"),
        ):
            status, head = self.head(reply := self.preflight(origin, method, headers))
            self.assertTrue(status.startswith(b"HTTP/1.1 403 "), (origin, method, headers))
            self.assertEqual([k for k in head if k.startswith(b"access-control-")], [])
            self.assertEqual(head[b"vary"], b"Origin")
            self.assertSecure(head)
            self.assertEqual(reply.split(b"\r\n\r\n", 1)[1], b"")  # no body

    def test_options_that_is_not_a_preflight_is_still_405(self) -> None:
        status, head = self.head(self.exchange(b"OPTIONS /api/chat HTTP/1.1\r\nHost: x\r\n\r\n"))
        self.assertTrue(status.startswith(b"HTTP/1.1 405 "))
        self.assertEqual([k for k in head if k.startswith(b"access-control-")], [])
        status, _ = self.head(
            self.exchange(
                b"OPTIONS /api/pubkey HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
                b"Access-Control-Request-Method: GET\r\n\r\n"
            )
        )
        self.assertTrue(status.startswith(b"HTTP/1.1 405 "))  # GET needs no preflight

    def test_preflight_then_streaming_chat(self) -> None:
        reply = self.preflight(b"https://app.example", headers=b"Content-Type")
        status, head = self.head(reply)
        self.assertTrue(status.startswith(b"HTTP/1.1 204 "))
        self.assertEqual(head[b"access-control-allow-origin"], b"https://app.example")
        self.assertEqual(head[b"access-control-allow-methods"], b"POST")
        self.assertEqual(head[b"access-control-allow-headers"], b"content-type")
        self.assertEqual(head[b"access-control-max-age"], b"600")
        self.assertSecure(head)
        self.assertEqual(reply.split(b"\r\n\r\n", 1)[1], b"")

        sealed = sealed_request(current_key(self.ring))
        peer = IPv4Address("TCP", "192.0.2.7", 1234)
        protocol = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        body = json.dumps(sealed.body).encode()
        protocol.dataReceived(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        response = FakeResponse()
        self.upstream.pending.callback(response)
        response.send(delta("hi") + FINISH)
        response.end()
        status, head = self.head(transport.value())
        self.assertTrue(status.startswith(b"HTTP/1.1 200 "))
        self.assertEqual(head[b"content-type"], b"text/event-stream")
        self.assertEqual(head[b"access-control-allow-origin"], b"https://app.example")
        self.assertEqual(head[b"access-control-expose-headers"], b"retry-after, date")
        self.assertEqual(head[b"vary"], b"Origin")
        self.assertSecure(head)
        rest = transport.value().split(b"\r\n\r\n", 1)[1]
        data = b""
        while rest:
            size, rest = rest.split(b"\r\n", 1)
            data, rest = data + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
        self.assertEqual(ResponseReader(sealed).feed(data)[-1]["type"], "done")

    def test_errors_carry_the_headers(self) -> None:
        status, head = self.head(self.chat(b"{}"))
        self.assertTrue(status.startswith(b"HTTP/1.1 400 "))
        self.assertEqual(head[b"access-control-allow-origin"], b"https://app.example")
        key = current_key(self.ring)
        self.chat(json.dumps(sealed_request(key).body).encode())  # spends the address's one token
        status, head = self.head(self.chat(json.dumps(sealed_request(key).body).encode()))
        self.assertTrue(status.startswith(b"HTTP/1.1 429 "))
        self.assertIn(b"retry-after", head)
        self.assertEqual(head[b"access-control-allow-origin"], b"https://app.example")
        self.assertEqual(head[b"access-control-expose-headers"], b"retry-after, date")
        self.assertSecure(head)

    def test_other_origin_reads_nothing(self) -> None:
        status, head = self.head(self.chat(b"{}", origin=b"https://app.example.evil.com"))
        self.assertTrue(status.startswith(b"HTTP/1.1 400 "))
        self.assertEqual([k for k in head if k.startswith(b"access-control-")], [])
        self.assertEqual(head[b"vary"], b"Origin")

    def test_pubkey_and_health(self) -> None:
        for path in (b"/api/pubkey", b"/health", b"/health/ready"):
            status, head = self.head(
                self.exchange(b"GET %s HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n" % path)
            )
            self.assertTrue(status.startswith(b"HTTP/1.1 200 "), path)
            self.assertEqual(head[b"access-control-allow-origin"], b"https://app.example", path)
            self.assertSecure(head)


class OhttpOnTheWire(Wire):
    """v2's routes get v1's treatment: exact origins, a preflight for nothing else refused."""

    origins = (ALLOWED,)

    def test_hostile_ohttp_preflights_get_403_and_no_cors_header(self) -> None:
        for origin, method, headers, path in (
            (b"https://evil.example", b"POST", b"content-type,privllm-pow", b"/api/ohttp"),
            (b"null", b"POST", b"content-type", b"/api/ohttp"),
            (b"https://app.example", b"PUT", b"content-type", b"/api/ohttp"),
            (b"https://app.example", b"POST", b"content-type,privllm-pow,authorization", b"/api/ohttp"),
            (b"https://app.example", b"POST", b"content-type,privllm-pow", b"/api/chat"),  # v1 reads no pow header
        ):
            status, head = self.head(reply := self.preflight(origin, method, headers, path))
            self.assertTrue(status.startswith(b"HTTP/1.1 403 "), (origin, method, headers, path))
            self.assertEqual([k for k in head if k.startswith(b"access-control-")], [])
            self.assertEqual(head[b"vary"], b"Origin")
            self.assertSecure(head)
            self.assertEqual(reply.split(b"\r\n\r\n", 1)[1], b"")

    def test_ohttp_preflight_allowed(self) -> None:
        reply = self.preflight(b"https://app.example", headers=b"content-type,privllm-pow", path=b"/api/ohttp")
        status, head = self.head(reply)
        self.assertTrue(status.startswith(b"HTTP/1.1 204 "), reply)
        self.assertEqual(head[b"access-control-allow-origin"], b"https://app.example")
        self.assertEqual(head[b"access-control-allow-methods"], b"POST")
        self.assertEqual(head[b"access-control-allow-headers"], b"content-type, privllm-pow")
        self.assertSecure(head)
        self.assertEqual(reply.split(b"\r\n\r\n", 1)[1], b"")

    def test_key_configurations_readable_by_allowed_origin_only(self) -> None:
        request = b"GET /api/ohttp-keys HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\n\r\n"
        status, head = self.head(self.exchange(request % b"https://evil.example"))
        self.assertTrue(status.startswith(b"HTTP/1.1 200 "))
        self.assertEqual([k for k in head if k.startswith(b"access-control-")], [])
        status, head = self.head(self.exchange(request % b"https://app.example"))
        self.assertTrue(status.startswith(b"HTTP/1.1 200 "))
        self.assertEqual(head[b"access-control-allow-origin"], b"https://app.example")
        self.assertEqual(head[b"access-control-expose-headers"], KEYS_EXPOSED)
        for name in KEYS_HEADERS:
            self.assertIn(name, head)
        self.assertSecure(head)

    def test_ohttp_errors_carry_the_headers(self) -> None:
        body = b"\x00" * 10
        reply = self.exchange(
            b"POST /api/ohttp HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
            b"Content-Type: message/ohttp-req\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status, head = self.head(reply)
        self.assertTrue(status.startswith(b"HTTP/1.1 400 "), reply)
        self.assertEqual(head[b"access-control-allow-origin"], b"https://app.example")
        self.assertEqual(head[b"access-control-expose-headers"], b"retry-after, date")


class OhttpOff(Wire):
    """With v2 off, its preflight is a 404 like its other routes, and names no origin."""

    origins = (ALLOWED,)
    v2 = False

    def test_ohttp_preflight_not_found(self) -> None:
        reply = self.preflight(b"https://app.example", headers=b"content-type,privllm-pow", path=b"/api/ohttp")
        status, head = self.head(reply)
        self.assertTrue(status.startswith(b"HTTP/1.1 404 "), reply)
        self.assertNotIn(b"access-control-allow-methods", head)
        self.assertNotIn(b"access-control-allow-headers", head)


class Disabled(Wire):
    """The default: no allow-list, no CORS header on any answer, OPTIONS as before."""

    origins = ()

    def test_no_header_anywhere(self) -> None:
        replies = [
            self.preflight(b"https://app.example"),
            self.preflight(b"https://app.example", path=b"/api/ohttp"),
            self.chat(b"{}"),
            self.exchange(b"GET /api/ohttp-keys HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n"),
            self.exchange(b"GET /api/pubkey HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n"),
            self.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n"),
        ]
        self.assertTrue(replies[0].startswith(b"HTTP/1.1 405 "))
        self.assertTrue(replies[1].startswith(b"HTTP/1.1 405 "))
        for reply in replies:
            _, head = self.head(reply)
            self.assertEqual([k for k in head if k.startswith(CORS_HEADERS)], [])
            self.assertSecure(head)
