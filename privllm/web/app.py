"""The public routes. Each handler is a few lines: checks live in the sans-IO admission,
asked of the shared state by privllm.state.gate."""

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
from ..protocol.cors import CorsPolicy
from ..protocol.encoding import dumps
from ..protocol.errors import METHOD_NOT_ALLOWED, NOT_FOUND, UNSUPPORTED_MEDIA_TYPE, Rejection, RequestRejected
from ..state.gate import AdmissionGate
from ..upstream.pool import NodePool
from .chat import ChatStream, StreamSettings
from .limits import ClientAddress
from .metrics import RouterMetrics
from .request import error_body

__all__ = ["RouterApp"]


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
        client_address: Callable[[Request], str] | None = None,
        cors: CorsPolicy | None = None,
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

    def _ready(self) -> bool:
        return self._pool.ready(self._clock.seconds())

    def resource(self) -> Any:
        return self.app.resource()

    def _security_headers(self, request: IRequest) -> None:
        request.setHeader(b"strict-transport-security", self._hsts)
        request.setHeader(b"x-content-type-options", b"nosniff")

    def _common_headers(self, request: IRequest) -> None:
        """On every answer but a preflight: JSON, errors and the event stream alike, so that an
        allowed page can read a 429's Retry-After as well as a chat."""
        self._security_headers(request)
        for name, value in self._cors.answer(request.requestHeaders.getRawHeaders(b"origin")):
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

    @app.route("/api/pubkey", methods=["GET"])
    def pubkey(self, request: Request) -> bytes:
        return self._json(request, 200, self._keyset(), cache=b"public, max-age=300")

    @app.route("/api/chat", methods=["POST"])
    def chat(self, request: Request) -> bytes | Deferred[Any]:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            return self._reject(request, UNSUPPORTED_MEDIA_TYPE)
        body = request.content.read() if request.content is not None else b""
        request.content = io.BytesIO()  # the request lives as long as its answer; its body need not
        admitted = self._gate.admit(body, self._client_address(request), self._clock.seconds(), self._ready())
        del body
        answered: Deferred[Any] = admitted.addCallbacks(
            lambda a: self._stream(request, a), lambda f: self._refused(request, f)
        )
        return answered

    @app.route("/api/chat", methods=["OPTIONS"])
    def chat_preflight(self, request: Request) -> bytes:
        """A browser's question before a cross-origin POST. A refused one is a 403 with no CORS
        header: the browser then never sends the POST."""
        raw = request.requestHeaders.getRawHeaders
        if not self._cors.is_preflight(raw(b"origin"), raw(b"access-control-request-method")):
            return self.method_not_allowed(request, None)
        preflight = self._cors.preflight(
            raw(b"origin"), raw(b"access-control-request-method"), raw(b"access-control-request-headers")
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

    def _stream(self, request: Request, admitted: Admitted) -> Deferred[None]:
        def release(result: object) -> object:
            self._gate.release(admitted)  # on every end: done, error, the client gone, or a bug
            return result

        done = maybeDeferred(self._start, request, admitted)
        return done.addBoth(release)

    def _start(self, request: Request, admitted: Admitted) -> Deferred[None]:
        self._common_headers(request)
        stream = ChatStream(
            request,
            self._clock,
            self._pool,
            self._metrics,
            self._settings,
            request_tag(admitted.envelope.request_id),
        )
        return stream.start(admitted.opened, admitted.envelope.encapsulated_key, refusal=admitted.refusal)

    @app.route("/health", methods=["GET"])
    def health(self, request: Request) -> bytes:
        return self._json(request, 200, dumps({"status": "ok"}))

    @app.route("/health/ready", methods=["GET"])
    def ready(self, request: Request) -> bytes:
        if self._ready():
            return self._json(request, 200, dumps({"status": "ready"}))
        return self._json(request, 503, dumps({"status": "unavailable"}))

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return self._json(request, NOT_FOUND.status, error_body(NOT_FOUND))

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return self._json(request, METHOD_NOT_ALLOWED.status, error_body(METHOD_NOT_ALLOWED))
