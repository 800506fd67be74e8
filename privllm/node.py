"""
The inference node's HTTPS front: llama-server cannot require client certificates, so a
node runs privllm in the node role. Only the router (a client certificate from the
deployment CA naming an allowed client) may reach five paths of the node-local llama-server:
GET /health, GET /props (reduced to the context of a slot), and POST /v1/chat/completions
(the OpenAI-compatible dialect), /completion (Harmony, for gpt-oss) and /tokenize (streamed
through, never buffered).
Nothing of the content is logged; the node never sees plaintext from outside the tunnel.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .body import BodyStream
from .protocol.encoding import dumps
from .upstream.llama import LlamaServer

__all__ = ["FORWARDED", "NodeProxy", "peer_names"]

log = Logger()
# The router's two dialects post to these; the node does not know which one the router speaks.
FORWARDED = (b"/v1/chat/completions", b"/completion", b"/tokenize")


def peer_names(request: Request) -> set[str]:
    """DNS names and the common name of the verified client certificate."""
    transport: Any = request.channel.transport if request.channel is not None else None
    cert = (
        transport.getPeerCertificate() if transport is not None and hasattr(transport, "getPeerCertificate") else None
    )
    if cert is None:
        return set()
    parsed = cert.to_cryptography()
    names = {a.value for a in parsed.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
    try:
        names |= set(
            parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName
            )
        )
    except x509.ExtensionNotFound:
        pass
    return {str(n) for n in names}


class NodeProxy(Resource):
    isLeaf = True

    def __init__(self, llama: LlamaServer, allowed_clients: list[str], health_timeout: float) -> None:
        super().__init__()
        self._llama = llama
        self._allowed = set(allowed_clients)
        self._health_timeout = health_timeout

    def render(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        if not peer_names(request) & self._allowed:
            request.setResponseCode(403)
            return b'{"error":"forbidden"}'
        if request.method == b"GET" and request.path == b"/health":
            return self._health(request)
        if request.method == b"GET" and request.path == b"/props":
            return self._props(request)
        if request.method == b"POST" and request.path in FORWARDED:
            return self._forward(request, request.path.decode())
        request.setResponseCode(404)
        return b'{"error":"not_found"}'

    def _health(self, request: Request) -> Any:
        async def answer() -> None:
            ready = await self._llama.ready(self._health_timeout)
            request.setResponseCode(200 if ready else 503)
            request.write(b'{"status":"ok"}' if ready else b'{"status":"loading"}')
            request.finish()

        ensureDeferred(answer()).addErrback(lambda _: None)
        return NOT_DONE_YET

    def _props(self, request: Request) -> Any:
        """Only what the router needs: the rest of /props names the model, its path and template."""

        async def answer() -> None:
            n_ctx = await self._llama.slot_context(self._health_timeout)
            request.setResponseCode(200 if n_ctx else 503)
            request.write(dumps({"default_generation_settings": {"n_ctx": n_ctx}}))
            request.finish()

        ensureDeferred(answer()).addErrback(lambda _: None)
        return NOT_DONE_YET

    def _forward(self, request: Request, path: str) -> Any:
        body = request.content.read() if request.content is not None else b""
        pending = self._llama.post_stream(path, body)
        stream: list[BodyStream] = []
        gone: list[bool] = []  # notifyFinish failed: the client left before the answer ended

        def got(response: Any) -> Any:
            request.setResponseCode(response.code)
            request.setHeader(b"content-type", b"text/event-stream")
            request.setHeader(b"cache-control", b"no-store")
            relay = BodyStream(request.write)
            stream.append(relay)
            response.deliverBody(relay)
            return relay.done

        def ended(result: object) -> None:
            if isinstance(result, Failure) and not stream and result.check(ConnectError):
                # llama-server is not there (restarting): say so, and the router marks this node down.
                request.setResponseCode(503)
                request.write(b'{"error":"unavailable"}')
                request.finish()
                return
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.info("upstream body failed: {kind}", kind=getattr(result.type, "__name__", "?"))
                transport: Any = request.channel.transport if request.channel is not None else None
                if transport is not None:
                    transport.abortConnection()  # the router must see a cut, not a clean end
                return
            if not request.finished and not gone:
                request.finish()

        def client_gone(_: object) -> None:
            gone.append(True)
            pending.cancel()
            for relay in stream:
                relay.stop()

        request.notifyFinish().addErrback(client_gone)
        pending.addCallback(got).addBoth(ended)
        return NOT_DONE_YET
