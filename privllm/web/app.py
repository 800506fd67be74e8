"""The public routes. Each handler is a few lines: checks live in the sans-IO admission,
asked of the shared state by privllm.state.gate.

Protocol v1: /api/pubkey and /api/chat (404 when `accept_v1` is off). Protocol v2 (Oblivious
HTTP): /api/ohttp-keys and /api/ohttp; an admitted v2 chat runs as v1's does, its answer
framed as a chunked OHTTP response (privllm.web.sealed.OhttpFraming)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..config.schema import Server
from ..logs import request_tag
from ..protocol.addresses import AddressPolicy
from ..protocol.admission import Admitted
from ..protocol.cors import ALLOWED_HEADERS, EXPOSED, KEYS_EXPOSED, OHTTP_HEADERS, CorsPolicy
from ..protocol.encoding import dumps
from ..protocol.errors import (
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    Rejection,
    RequestRejected,
)
from ..protocol.ohttp.errors import OhttpError
from ..protocol.v2.admission import POW_HEADER, AdmittedV2, request_id
from ..protocol.v2.keys import CONTENT_TYPE as OHTTP_KEYS
from ..protocol.v2.keys import SignedKeyConfigs
from ..protocol.v2.response import ResponseStream
from ..state.gate import AdmissionGate
from ..upstream.pool import NodePool
from .chat import ChatStream, StreamSettings
from .limits import ClientAddress
from .metrics import RouterMetrics
from .request import error_body
from .sealed import OHTTP_CHUNKED, OhttpFraming

OHTTP_REQUEST = b"message/ohttp-req"
STALE_MESSAGE = "the request's timestamp is outside the window; correct the clock from `date` and send anew"

__all__ = ["OHTTP_REQUEST", "STALE_MESSAGE", "RouterApp"]


class RouterApp:
    app = Klein()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        gate: AdmissionGate,
        keyset: Callable[[], bytes],
        pool: NodePool,
        metrics: RouterMetrics,
        hsts_max_age: int,
        settings: StreamSettings,
        client_address: ClientAddress | None = None,
        cors: CorsPolicy | None = None,
        ohttp_keys: Callable[[], SignedKeyConfigs] | None = None,
        accept_v1: bool = True,
    ) -> None:
        self._client_address = client_address or ClientAddress(AddressPolicy(Server.ipv6_prefix), "")
        self._clock = clock
        self._gate = gate
        self._keyset = keyset
        self._pool = pool
        self._metrics = metrics
        self._hsts = f"max-age={hsts_max_age}; includeSubDomains".encode()
        self._settings = settings
        self._cors = cors or CorsPolicy(())
        self._ohttp_keys = ohttp_keys  # None: protocol v2 is off (its routes answer 404)
        self._accept_v1 = accept_v1

    def _ready(self) -> bool:
        return self._pool.ready(self._clock.seconds())

    def resource(self) -> Any:
        return self.app.resource()

    def _security_headers(self, request: IRequest) -> None:
        request.setHeader(b"strict-transport-security", self._hsts)
        request.setHeader(b"x-content-type-options", b"nosniff")

    def _common_headers(self, request: IRequest, exposed: bytes = EXPOSED) -> None:
        """On every answer but a preflight: JSON, errors and the event stream alike, so that an
        allowed page can read a 429's Retry-After as well as a chat."""
        self._security_headers(request)
        for name, value in self._cors.answer(request.requestHeaders.getRawHeaders(b"origin"), exposed):
            request.setHeader(name, value)

    def _json(self, request: IRequest, status: int, body: bytes, cache: bytes = b"no-store") -> bytes:
        self._common_headers(request)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", cache)
        return body

    def _reject(
        self,
        request: Request,
        rejection: Rejection,
        retry_after: int | None = None,
        body: dict[str, object] | None = None,
        reason: str | None = None,
    ) -> bytes:
        self._metrics.requests.labels(rejection.code).inc()
        if reason is not None:
            self._metrics.refusals.labels(reason).inc()
        if retry_after is not None:
            request.setHeader(b"retry-after", str(retry_after).encode())
        return self._json(request, rejection.status, dumps(body) if body else error_body(rejection))

    def _media_type(self, request: Request) -> bytes:
        return (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()

    def _body(self, request: Request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        request.content = io.BytesIO()  # the request lives as long as its answer; its body need not
        return body

    @app.route("/api/pubkey", methods=["GET"])
    def pubkey(self, request: Request) -> bytes:
        if not self._accept_v1:
            return self.not_found(request, None)
        return self._json(request, 200, self._keyset(), cache=b"public, max-age=300")

    @app.route("/api/chat", methods=["POST"])
    def chat(self, request: Request) -> bytes | Deferred[Any]:
        if not self._accept_v1:
            return self.not_found(request, None)

        def admit(body: bytes, address: str, relay: bool) -> Deferred[Any]:
            return self._gate.admit(body, address, self._clock.seconds(), self._ready(), relay)

        return self._admit(request, b"application/json", admit, lambda a: self._stream(request, a, self._start))

    @app.route("/api/ohttp-keys", methods=["GET"])
    def ohttp_keys(self, request: Request) -> bytes:
        if self._ohttp_keys is None:
            return self.not_found(request, None)
        try:
            signed = self._ohttp_keys()
        except OhttpError:  # a ring with no current key: nothing to publish (no chat to count)
            return self._json(request, UNAVAILABLE.status, error_body(UNAVAILABLE))
        self._common_headers(request, KEYS_EXPOSED)  # a page must read the signature's headers
        request.setResponseCode(200)
        request.setHeader(b"content-type", OHTTP_KEYS)
        request.setHeader(b"cache-control", b"public, max-age=300")
        for name, value in signed.headers():
            request.setHeader(name, value)
        return signed.body

    @app.route("/api/ohttp", methods=["POST"])
    def ohttp(self, request: Request) -> bytes | Deferred[Any]:
        if self._ohttp_keys is None or self._gate.admission_v2 is None:
            return self.not_found(request, None)
        pow_header = request.requestHeaders.getRawHeaders(POW_HEADER)

        def admit(body: bytes, address: str, relay: bool) -> Deferred[Any]:
            return self._gate.admit_v2(body, pow_header, address, self._clock.seconds(), self._ready(), relay)

        return self._admit(request, OHTTP_REQUEST, admit, lambda a: self._answer_v2(request, a))

    def _admit(
        self,
        request: Request,
        media_type: bytes,
        admit: Callable[[bytes, str, bool], Deferred[Any]],
        answer: Callable[[Any], Any],
    ) -> bytes | Deferred[Any]:
        """What both versions' chat routes do before and after their admission."""
        if self._media_type(request) != media_type:
            return self._reject(request, UNSUPPORTED_MEDIA_TYPE)
        try:
            address = self._client_address(request)
        except RequestRejected as e:  # a trusted proxy's header that is no bare address
            return self._reject(request, e.rejection)
        relay = self._client_address.relay(request)  # a relay's v1 requests count as a relay's too
        body = self._body(request)
        admitted = admit(body, address, relay)
        del body
        answered: Deferred[Any] = admitted.addCallbacks(answer, lambda f: self._refused(request, f))
        return answered

    @app.route("/api/chat", methods=["OPTIONS"])
    def chat_preflight(self, request: Request) -> bytes:
        if not self._accept_v1:
            return self.not_found(request, None)
        return self._preflight(request, ALLOWED_HEADERS)

    @app.route("/api/ohttp", methods=["OPTIONS"])
    def ohttp_preflight(self, request: Request) -> bytes:
        """v2's message/ohttp-req is not a CORS-safelisted type: a browser always asks first."""
        if self._ohttp_keys is None or self._gate.admission_v2 is None:
            return self.not_found(request, None)
        return self._preflight(request, OHTTP_HEADERS)

    def _preflight(self, request: Request, route_headers: frozenset[bytes]) -> bytes:
        """A browser's question before a cross-origin POST. A refused one is a 403 with no CORS
        header: the browser then never sends the POST."""
        raw = request.requestHeaders.getRawHeaders
        if not self._cors.is_preflight(raw(b"origin"), raw(b"access-control-request-method")):
            return self.method_not_allowed(request, None)
        preflight = self._cors.preflight(
            raw(b"origin"), raw(b"access-control-request-method"), raw(b"access-control-request-headers"), route_headers
        )
        self._security_headers(request)
        request.setResponseCode(204 if preflight.allowed else 403)
        request.setHeader(b"cache-control", b"no-store")
        if not preflight.allowed:
            request.setHeader(b"content-length", b"0")  # a 204 has none; a 403 says it is empty
        for name, value in preflight.headers:
            request.setHeader(name, value)
        return b""

    def _refused(self, request: Request, failure: Failure) -> bytes:
        failure.trap(RequestRejected)
        e = cast(RequestRejected, failure.value)
        return self._reject(request, e.rejection, e.retry_after, e.body, e.reason)

    def _stream(
        self, request: Request, admitted: Admitted | AdmittedV2, start: Callable[[Request, Any], Deferred[None]]
    ) -> Deferred[None]:
        def release(result: object) -> object:
            self._gate.release(admitted)  # on every end: done, error, the client gone, or a bug
            return result

        done = maybeDeferred(start, request, admitted)
        return done.addBoth(release)

    def _chat_stream(self, request: Request, rid: str) -> ChatStream:
        self._common_headers(request)
        return ChatStream(request, self._clock, self._pool, self._metrics, self._settings, request_tag(rid))

    def _start(self, request: Request, admitted: Admitted) -> Deferred[None]:
        stream = self._chat_stream(request, admitted.envelope.request_id)
        return stream.start(admitted.opened, admitted.envelope.encapsulated_key, refusal=admitted.refusal)

    def _answer_v2(self, request: Request, admitted: AdmittedV2) -> bytes | Deferred[None]:
        if admitted.stale:
            return self._stale(request, admitted)
        return self._stream(request, admitted, self._start_v2)

    def _start_v2(self, request: Request, admitted: AdmittedV2) -> Deferred[None]:
        opened = admitted.opened
        stream = self._chat_stream(request, request_id(opened.enc))
        framing = OhttpFraming(opened.context, self._settings.privacy.pad_to)
        return stream.run(framing, opened.chat_plaintext, refusal=admitted.refusal)

    def _stale(self, request: Request, admitted: AdmittedV2) -> bytes:
        """The inner 401 with the router's date: the client corrects its clock once and sends anew."""
        self._metrics.requests.labels("stale").inc()
        self._common_headers(request)
        request.setResponseCode(200)
        request.setHeader(b"content-type", OHTTP_CHUNKED)
        request.setHeader(b"cache-control", b"no-store")
        stream = ResponseStream(admitted.opened.context, self._settings.privacy.pad_to)
        error = {"type": "error", "code": "stale", "message": STALE_MESSAGE}
        return stream.refusal(401, error, date=int(self._clock.seconds()))

    @app.route("/health", methods=["GET"])
    def health(self, request: Request) -> bytes:
        return self._json(request, 200, dumps({"status": "ok"}))

    @app.route("/health/ready", methods=["GET"])
    def ready(self, request: Request) -> bytes:
        if self._ready():
            return self._json(request, 200, dumps({"status": "ready"}))
        return self._json(request, 503, dumps({"status": "unavailable"}))

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure | None) -> bytes:
        return self._json(request, NOT_FOUND.status, error_body(NOT_FOUND))

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return self._json(request, METHOD_NOT_ALLOWED.status, error_body(METHOD_NOT_ALLOWED))
