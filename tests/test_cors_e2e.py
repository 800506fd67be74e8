"""A browser's cross-origin chat on the real stack, over TLS: the preflight, then the
streamed answer, each with the headers a browser checks; another origin gets none."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from .docclient import DocClient, open_stream
from .test_abuse_e2e import guarded
from .test_e2e import user

ORIGIN = "https://app.example"


class Cors(TestCase):
    def setUp(self) -> None:
        self.router = guarded("cors", {"server": {"cors_origins": [ORIGIN]}})
        self.client = DocClient(self.router.port, self.router.ssl_context(), self.router.pin())

    def preflight(
        self, origin: str, method: str = "POST", path: str = "/api/chat", headers: str = "content-type"
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.client.connection()
        conn.request(
            "OPTIONS",
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": headers,
            },
        )
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def test_hostile_preflights_refused(self) -> None:
        for origin, method in (("https://app.example.evil.com", "POST"), ("null", "POST"), (ORIGIN, "PUT")):
            status, headers, body = self.preflight(origin, method)
            self.assertEqual((status, body), (403, b""), (origin, method))
            self.assertEqual([k for k in headers if k.startswith("access-control-")], [])

    def test_preflight_then_chat(self) -> None:
        status, headers, body = self.preflight(ORIGIN)
        self.assertEqual((status, body), (204, b""))
        self.assertEqual(headers["access-control-allow-origin"], ORIGIN)
        self.assertEqual(headers["access-control-allow-methods"], "POST")
        self.assertEqual(headers["access-control-allow-headers"], "content-type")
        self.assertEqual(headers["access-control-max-age"], "600")
        self.assertNotIn("access-control-allow-credentials", headers)
        self.assertIn("strict-transport-security", headers)

        body, enc, secret = self.client.seal(user("Say hi.", max_tokens=8))
        status, answer, raw = self.client.post(body, origin=ORIGIN)
        self.assertEqual(status, 200, raw)
        self.assertEqual(answer["Content-Type"], "text/event-stream")
        self.assertEqual(answer["Access-Control-Allow-Origin"], ORIGIN)
        self.assertEqual(answer["Access-Control-Expose-Headers"], "retry-after, date")
        self.assertEqual(answer["Vary"], "Origin")
        self.assertIsNone(answer["Access-Control-Allow-Credentials"])
        self.assertEqual(open_stream(raw, enc, secret)[-1]["type"], "done")

    def test_error_readable_other_origin_not(self) -> None:
        status, answer, _ = self.client.post(b"{}", origin=ORIGIN)
        self.assertEqual((status, answer["Access-Control-Allow-Origin"]), (400, ORIGIN))
        status, answer, _ = self.client.post(b"{}", origin="http://app.example")
        self.assertEqual((status, answer["Access-Control-Allow-Origin"]), (400, None))

    def test_v2_preflight_and_key_configurations(self) -> None:
        """v2's routes as a browser meets them: the preflight of POST /api/ohttp allows the pow
        header only for the allowed origin, and the key configurations' signature is exposed."""
        for origin, headers in ((ORIGIN, "content-type,privllm-pow,authorization"), ("null", "content-type")):
            status, answer, body = self.preflight(origin, path="/api/ohttp", headers=headers)
            self.assertEqual((status, body), (403, b""), (origin, headers))
            self.assertEqual([k for k in answer if k.startswith("access-control-")], [])
        status, answer, body = self.preflight(ORIGIN, path="/api/ohttp", headers="content-type,privllm-pow")
        self.assertEqual((status, body), (204, b""))
        self.assertEqual(answer["access-control-allow-origin"], ORIGIN)
        self.assertEqual(answer["access-control-allow-headers"], "content-type, privllm-pow")

        conn = self.client.connection()
        conn.request("GET", "/api/ohttp-keys", headers={"Origin": ORIGIN})
        response = conn.getresponse()
        response.read()
        self.assertEqual(response.status, 200)
        exposed = [name.strip() for name in response.getheader("Access-Control-Expose-Headers", "").split(",")]
        for name in (
            "privllm-keys-signing-key",
            "privllm-keys-issued",
            "privllm-keys-expires",
            "privllm-keys-signature",
        ):
            self.assertIn(name, exposed)
            self.assertIsNotNone(response.getheader(name), name)
