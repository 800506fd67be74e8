"""
A client of protocol v1 or v2 on Twisted's Agent: fetch and verify the keys, seal, post, open
the stream. Everything the router sends is read with bounds (size, time, JSON depth) and
checked before use; a hostile answer ends as one of the errors below, never as another exception.

The keys are trusted only through the pinned identity key; TLS is checked too (against
the system roots, or a given certificate such as the dev router's self-signed one).

v2 (Oblivious HTTP): the signed key configurations from /api/ohttp-keys, the chat sealed with
the device proof inside and posted to /api/ohttp, the chunked answer read as it arrives. The
same errors (and privllm-chat exit codes) as v1 for the same failures.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from OpenSSL import crypto
from twisted.internet import defer, ssl
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from ..body import BodyStream, BytesProducer
from ..endpoints import AgentEndpoints, pooled_agent
from ..protocol.encoding import EncodingError, b64decode, b64encode, dumps, loads_bounded
from ..protocol.keyset import (
    MAX_KEYSET_BYTES,
    KeySet,
    KeySetError,
    PublishedKey,
    StaleKeySet,
    choose_key,
    verify_keyset,
)
from ..protocol.ohttp.keyconfig import KeyConfig
from ..protocol.pow import CHALLENGE_SIZE, PowError, solve
from ..protocol.request import Encapsulation, encapsulate, new_request_id, seal_request
from ..protocol.response import ResponseReader
from ..protocol.stream import StreamError
from ..protocol.suite import POW_MAX_DIFFICULTY
from ..protocol.v2.keys import HEADERS as KEY_CONFIG_HEADERS
from ..protocol.v2.keys import VerifiedKeyConfigs, verify_key_configs
from ..protocol.v2.request import SealedV2, seal_chat_request
from ..protocol.v2.response import ResponseReader as ResponseReaderV2

__all__ = [
    "BODY_TIMEOUT",
    "ERROR_CODE",
    "IDLE_SECONDS",
    "MAX_CLOCK_CORRECTION",
    "MAX_ERROR_BYTES",
    "MAX_RETRY_AFTER",
    "NETWORK_ERRORS",
    "OHTTP_REQUEST_TYPE",
    "OHTTP_RESPONSE_TYPE",
    "POW_HEADER",
    "PROTOCOLS",
    "STREAM_IDLE_TIMEOUT",
    "ChatResult",
    "ClientError",
    "NetworkError",
    "PinnedRootPolicy",
    "PrivllmClient",
    "ProofOfWorkRefused",
    "ProtocolFailure",
    "ServerError",
    "StaleClock",
    "StreamReader",
    "TruncatedError",
    "error_code",
    "read_stream",
    "read_stream_v2",
    "router_url",
]

# The most a v2 router's date may move this client's clock: its answer is authenticated, but
# only by the router's key, and a date far off (1900) broke every later chat of the instance.
MAX_CLOCK_CORRECTION = 86400
IDLE_SECONDS = 45  # kept connections close before the router closes them (its idle_timeout)


class ClientError(Exception):
    """The base of the client's errors. `code`: a short stable name; a ServerError carries the
    router's own. `exit_code`: privllm-chat's exit status for it."""

    code = "client"
    exit_code = 1


class NetworkError(ClientError):
    """The router could not be reached, or the connection broke."""

    code = "network"
    exit_code = 3


class ProtocolFailure(ClientError):
    """The router's answer broke the protocol: bad signature, tampered or malformed chunk."""

    code = "protocol_failure"
    exit_code = 4


class TruncatedError(ClientError):
    """The stream ended without a verified final chunk."""

    code = "truncated"
    exit_code = 5


class ServerError(ClientError):
    """The router refused the request (plaintext error) or ended the stream with a sealed error."""

    code = "server_error"
    exit_code = 6

    def __init__(
        self,
        code: str,
        status: int | None = None,
        retry_after: int | None = None,
        date: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            f"server error {code}"
            + (f" (HTTP {status})" if status else "")
            + (f", retry after {retry_after} s" if retry_after is not None else "")
        )
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.date = date
        self.details = details or {}  # the whole JSON reply, e.g. a proof-of-work challenge


class ProofOfWorkRefused(ServerError):
    """The router (or whoever answers in its name: the demand is not signed) asks for more
    proof of work than this client will do."""

    code = "pow_refused"

    def __init__(self, difficulty: int, maximum: int) -> None:
        super().__init__("pow_required", 429)
        self.args = (
            f"the router asks for {difficulty} bits of proof of work, above this client's maximum of {maximum}",
        )


class StaleClock(ServerError):
    """v2: the router found the request's time outside its window and said its own time inside
    the sealed answer (so it is the router's word); the client corrects its clock once and
    sends the chat again as a new request. A second one is an error like any other."""

    code = "stale_clock"

    def __init__(self, router_time: int) -> None:
        super().__init__("stale", 401)
        self.router_time = router_time


@dataclass
class ChatResult:
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    chunks: list[dict[str, Any]] = field(default_factory=list)


@implementer(IPolicyForHTTPS)
class PinnedRootPolicy:
    """Verify the server against one trust root (the dev certificate) or the platform's roots."""

    def __init__(self, root_pem: bytes | None) -> None:
        try:
            self._root = ssl.Certificate.loadPEM(root_pem) if root_pem else None
        except crypto.Error as e:
            raise ValueError("the trust root is not a PEM certificate") from e

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        # Twisted's Agent speaks HTTP/1.1 only, so no ALPN offer of h2 here.
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._root)


NETWORK_ERRORS = (ConnectError, DNSLookupError, TimeoutError, ConnectionLost, ResponseFailed)
MAX_ERROR_BYTES = 4096  # a plaintext refusal or a proof-of-work challenge is about 150 bytes
BODY_TIMEOUT = 30.0  # seconds to read a whole key set or refusal
STREAM_IDLE_TIMEOUT = 90.0  # the router sends a keepalive after 15 s without an event
ERROR_CODE = re.compile(r"[a-z_]{1,32}")  # the router's codes; anything else is not repeated
MAX_RETRY_AFTER = 86400
PROTOCOLS = (1, 2)
OHTTP_REQUEST_TYPE = b"message/ohttp-req"
OHTTP_RESPONSE_TYPE = b"message/ohttp-chunked-res"
POW_HEADER = b"Privllm-Pow"


def router_url(text: str) -> str:
    """https://host[:port], ASCII, nothing after it: the base the client adds /api/... to."""
    if not text.isascii():
        raise ValueError("the router URL must be ASCII (IDNA-encode the host name)")
    url = urlsplit(text.rstrip("/"))
    try:
        url.port  # noqa: B018 (parsing the port raises ValueError when it is out of range)
    except ValueError as e:
        raise ValueError("the router URL has a bad port") from e
    if url.scheme != "https" or not url.hostname or url.path or url.query or url.fragment or url.username:
        raise ValueError("the router URL must be https://host[:port]")
    return url.geturl()


def error_code(value: object) -> str:
    """A code from the router, or "unknown": never echo arbitrary server text to a terminal."""
    return value if isinstance(value, str) and ERROR_CODE.fullmatch(value) else "unknown"


class PrivllmClient:
    def __init__(
        self,
        reactor: IReactorTime,
        base_url: str,
        pinned_identity: bytes,
        device_private_key: bytes,
        trust_root_pem: bytes | None = None,
        on_pow: Callable[[int, int], None] | None = None,
        max_pow_difficulty: int = POW_MAX_DIFFICULTY,
        protocol: int = 1,
    ) -> None:
        """`on_pow(difficulty, tries)` is told how a proof of work the router asked for is going;
        a router asking more than `max_pow_difficulty` bits (at most the protocol's ceiling) is
        refused rather than obeyed: the demand is not authenticated. `protocol`: 1 (the key
        set, /api/chat) or 2 (Oblivious HTTP, /api/ohttp)."""
        if not 1 <= max_pow_difficulty <= POW_MAX_DIFFICULTY:
            raise ValueError(f"max_pow_difficulty must be between 1 and {POW_MAX_DIFFICULTY}")
        if protocol not in PROTOCOLS:
            raise ValueError("protocol must be 1 or 2")
        self.protocol = protocol
        self._max_pow = max_pow_difficulty
        self._on_pow = on_pow
        self._reactor = reactor
        self._base = router_url(base_url)
        self._chat_url = (self._base + "/api/chat").encode("ascii")
        self._pubkey_url = (self._base + "/api/pubkey").encode("ascii")
        self._ohttp_url = (self._base + "/api/ohttp").encode("ascii")
        self._ohttp_keys_url = (self._base + "/api/ohttp-keys").encode("ascii")
        self._pin = pinned_identity
        self._device = device_private_key
        # Keep connections open between chats, as an app would: no TLS handshake per message.
        # Closed after IDLE_SECONDS, before the router closes them (server.idle_timeout, 60 s by
        # default): a chat sent on a connection the router is closing fails, and is not retried.
        endpoints = AgentEndpoints(reactor, PinnedRootPolicy(trust_root_pem))
        agent: Any
        agent, self._pool = pooled_agent(reactor, endpoints, keep=2, idle_seconds=IDLE_SECONDS)
        self._agent = agent
        self._keyset: KeySet | None = None
        self._prepared: Encapsulation | None = None
        self._configs: VerifiedKeyConfigs | None = None  # v2: the configurations held, with their signed times
        self._clock_offset = 0  # v2: seconds to add to this device's clock, as the router said

    def close(self) -> Deferred[None]:
        """Close the kept-alive connections (a client that is done, or a test that must leave none)."""
        return self._pool.closeCachedConnections()

    def _now(self) -> int:
        return int(self._reactor.seconds())

    async def fetch_keys(self) -> list[PublishedKey]:
        """Fetch and verify the key set. A stale one (an old copy in a cache, or replayed) is
        fetched once more past caches; a second stale set is refused."""
        for attempt in range(2):
            headers = {b"Cache-Control": [b"no-cache"]} if attempt else {}
            raw = await self._get_pubkey(headers)
            try:
                self._keyset = verify_keyset(raw, self._pin, self._now())
                return self._keyset.keys
            except StaleKeySet as e:
                if attempt:
                    raise ProtocolFailure(f"key set rejected: {e}") from e
            except KeySetError as e:
                raise ProtocolFailure(f"key set rejected: {e}") from e
        raise AssertionError("unreachable")

    async def fetch_key_configs(self, past_caches: bool = False) -> tuple[KeyConfig, ...]:
        """v2: fetch and verify the signed key configurations, with v1's rule for a stale copy."""
        for attempt in range(2):
            headers = {b"Cache-Control": [b"no-cache"]} if attempt or past_caches else {}
            response, body = await self._get(self._ohttp_keys_url, headers, MAX_KEYSET_BYTES, "ohttp_keys_unavailable")
            fields = {
                name: b", ".join(values)  # a repeated header, combined as HTTP does, fails the strict parse
                for name in KEY_CONFIG_HEADERS
                if (values := response.headers.getRawHeaders(name))
            }
            try:
                self._configs = verify_key_configs(body, fields, self._pin, self._now())
                return self._configs.configs
            except StaleKeySet as e:
                if attempt:
                    raise ProtocolFailure(f"key configurations rejected: {e}") from e
            except KeySetError as e:
                raise ProtocolFailure(f"key configurations rejected: {e}") from e
        raise AssertionError("unreachable")

    async def current_key_configs(self) -> tuple[KeyConfig, ...]:
        """v2: the configurations held, while fresh; else newly fetched ones."""
        if self._configs is not None:
            try:
                self._configs.check_fresh(self._now())
                return self._configs.configs
            except StaleKeySet:
                self._configs = None
        return await self.fetch_key_configs()

    async def current_keys(self) -> list[PublishedKey]:
        """The keys of the set held, while it is fresh; else of a newly fetched one."""
        if self._keyset is not None:
            try:
                self._keyset.check_fresh(self._now())
                return self._keyset.keys
            except StaleKeySet:
                self._keyset = None
        return await self.fetch_keys()

    async def _get_pubkey(self, headers: dict[bytes, list[bytes]]) -> bytes:
        return (await self._get(self._pubkey_url, headers, MAX_KEYSET_BYTES, "pubkey_unavailable"))[1]

    async def _get(
        self, url: bytes, headers: dict[bytes, list[bytes]], limit: int, unavailable: str
    ) -> tuple[Any, bytes]:
        """The response and its whole body (at most `limit` bytes) of a GET answered 200;
        ServerError(`unavailable`) for any other status."""
        request = self._agent.request(b"GET", url, Headers(headers))
        try:
            response = await request.addTimeout(BODY_TIMEOUT, self._reactor)
        except NETWORK_ERRORS as e:
            raise NetworkError(f"cannot fetch the keys: {e.__class__.__name__}") from e
        if response.code != 200:
            try:
                await self._read_body(response, MAX_ERROR_BYTES)  # unused: the status says it all
            except ProtocolFailure:
                pass
            raise ServerError(unavailable, response.code)
        return response, await self._read_body(response, limit)

    async def _read_body(self, response: Any, limit: int) -> bytes:
        """A whole small body, at most `limit` bytes and BODY_TIMEOUT seconds."""
        parts: list[bytes] = []
        size = 0

        def on_data(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > limit:
                raise ProtocolFailure("the router's answer is too large")
            parts.append(data)

        body = BodyStream(on_data)
        response.deliverBody(body)
        try:
            await body.done.addTimeout(BODY_TIMEOUT, self._reactor)
        except PotentialDataLoss:
            pass  # no length given and the connection closed: what matters is what arrived
        except (defer.TimeoutError, *NETWORK_ERRORS) as e:
            body.stop()
            raise NetworkError(f"the router's answer did not arrive whole: {e.__class__.__name__}") from e
        return b"".join(parts)

    def seal(self, plaintext: dict[str, Any], key: PublishedKey, request_id: str | None = None) -> Any:
        prepared, self._prepared = self._prepared, None  # an encapsulation seals once
        if prepared is not None and prepared.router_public_key != key.public_key:
            prepared = None
        return seal_request(
            key_id=key.key_id,
            router_public_key=key.public_key,
            device_private_key=self._device,
            plaintext=plaintext,
            timestamp=int(self._reactor.seconds()),
            request_id=request_id or new_request_id(),
            encapsulation=prepared,
        )

    def prepare(self, key: PublishedKey) -> None:
        """Make the next chat's HPKE encapsulation now, while idle: about half a millisecond
        less between send and first token (the key exchange does not depend on the message)."""
        self._prepared = encapsulate(key.public_key, self._device)

    async def chat(
        self, plaintext: dict[str, Any], on_chunk: Callable[[dict[str, Any]], None] | None = None
    ) -> ChatResult:
        """Send one chat; `on_chunk` sees every opened chunk as it arrives. Retries once on
        unknown_key (v2: and once on a stale clock, corrected from the router's date)."""
        if self.protocol == 2:
            return await self._chat_v2(plaintext, on_chunk)
        for attempt in range(2):
            keys = await self.current_keys()
            try:
                key = choose_key(keys, self._now())
            except KeySetError:
                key = None
            if key is not None:
                try:
                    return await self._chat_once(plaintext, key, on_chunk)
                except ServerError as e:
                    if e.code != "unknown_key" or attempt:
                        raise
            elif attempt:
                raise ProtocolFailure("the key set holds no key valid now")
            self._keyset = None
        raise AssertionError("unreachable")

    async def post(self, body: dict[str, Any] | bytes, headers: dict[bytes, list[bytes]] | None = None) -> Any:
        """POST a request body straight to the Agent: no wrapper adds to time to first token."""
        data = body if isinstance(body, bytes) else dumps(body)
        hdrs = {b"Content-Type": [b"application/json"], b"Accept": [b"text/event-stream"], **(headers or {})}
        return await self._post_to(self._chat_url, data, hdrs)

    async def _post_to(self, url: bytes, data: bytes, headers: dict[bytes, list[bytes]]) -> Any:
        request = self._agent.request(b"POST", url, Headers(headers), BytesProducer(data))
        try:
            return await request.addTimeout(60, self._reactor)
        except NETWORK_ERRORS as e:
            raise NetworkError(f"cannot reach the router: {e.__class__.__name__}") from e

    async def _chat_once(
        self, plaintext: dict[str, Any], key: PublishedKey, on_chunk: Callable[[dict[str, Any]], None] | None
    ) -> ChatResult:
        sealed = self.seal(plaintext, key)
        body = sealed.body
        for attempt in range(3):
            response = await self.post(body)
            if response.code == 200:
                result = await read_stream(response, ResponseReader(sealed), self._reactor, on_chunk)
                self.prepare(key)  # idle now, until the next message
                return result
            try:
                await self._raise_plaintext_error(response)
            except ServerError as e:
                if e.code != "pow_required" or attempt == 2:
                    raise
                request_id = sealed.body["request_id"]
                solution = await self._solve(e.details, request_id.encode())
                # Sealed again after the work (which can outlast the replay window), with the
                # request id the solution is bound to: the refused request never opened.
                sealed = self.seal(plaintext, key, request_id)
                body = {**sealed.body, "pow": solution}
        raise AssertionError("unreachable")

    async def _raise_plaintext_error(self, response: Any) -> None:
        raw = await self._read_body(response, MAX_ERROR_BYTES)
        try:
            details = loads_bounded(raw, MAX_ERROR_BYTES, max_depth=1)
        except EncodingError:
            details = None
        if not isinstance(details, dict):
            details = {}
        retry = response.headers.getRawHeaders(b"retry-after") or [b""]
        date = response.headers.getRawHeaders(b"date") or [b""]
        raise ServerError(
            error_code(details.get("error")),
            response.code,
            _retry_after(retry[0]),
            date[0][:64].decode("ascii", "replace") or None,
            details,
        )

    async def _chat_v2(
        self, plaintext: dict[str, Any], on_chunk: Callable[[dict[str, Any]], None] | None
    ) -> ChatResult:
        """Sealed anew (a new `enc`) after unknown_key, with configurations fetched past caches,
        and after a stale clock, corrected from the router's date: each at most once."""
        refetched = corrected = False
        for _ in range(3):
            configs = await self.current_key_configs()
            # The router lists one configuration per live key; each lists only suites of the allow-list.
            sealed = seal_chat_request(configs[0], self._device, plaintext, self._now() + self._clock_offset)
            try:
                return await self._exchange_v2(sealed, on_chunk)
            except StaleClock as e:
                if corrected:
                    raise
                corrected = True
                offset = e.router_time - self._now()
                if abs(offset) > MAX_CLOCK_CORRECTION:
                    raise ProtocolFailure(
                        f"the router's date is {offset} s from this clock: more than a day, not taken"
                    ) from e
                self._clock_offset = offset
            except ServerError as e:
                if e.code != "unknown_key" or refetched:
                    raise
                refetched = True
                await self.fetch_key_configs(past_caches=True)
        raise AssertionError("unreachable")

    async def _exchange_v2(self, sealed: SealedV2, on_chunk: Callable[[dict[str, Any]], None] | None) -> ChatResult:
        """Post one sealed request. Proof of work is bound to its `enc`, so the same body goes
        again with the solution: sealing anew would need new work."""
        headers = {b"Content-Type": [OHTTP_REQUEST_TYPE], b"Accept": [OHTTP_RESPONSE_TYPE]}
        for attempt in range(3):
            response = await self._post_to(self._ohttp_url, sealed.body, headers)
            if response.code == 200:
                return await read_stream_v2(response, sealed, self._reactor, on_chunk)
            try:
                await self._raise_plaintext_error(response)
            except ServerError as e:
                if e.code != "pow_required" or attempt == 2:
                    raise
                solution = await self._solve(e.details, sealed.enc)
                header = f"{solution['challenge']}.{solution['nonce']}".encode("ascii")
                headers = {**headers, POW_HEADER: [header]}
        raise AssertionError("unreachable")

    async def _solve(self, challenge: dict[str, Any], bound: bytes) -> dict[str, str]:
        """The router is under stress and asks for proof of work: find it off the reactor
        thread, bound to v1's request id or v2's `enc`."""
        difficulty = challenge.get("difficulty")
        try:
            raw = b64decode(challenge.get("challenge"), CHALLENGE_SIZE)
        except EncodingError as e:
            raise ProtocolFailure("malformed proof-of-work challenge") from e
        if not isinstance(difficulty, int) or isinstance(difficulty, bool) or difficulty < 1:
            raise ProtocolFailure("malformed proof-of-work challenge")
        if difficulty > self._max_pow:
            raise ProofOfWorkRefused(difficulty, self._max_pow)
        report = self._on_pow
        threads = IReactorThreads(self._reactor)

        def progress(tries: int) -> None:
            if report is not None:
                threads.callFromThread(report, difficulty, tries)

        # A nonce is found within 2**difficulty tries on average; 64 times that fails with
        # probability e**-64, so the bound only stops a loop that could not end otherwise.
        limit = 1 << (difficulty + 6)
        try:
            nonce = await deferToThreadPool(
                threads, threads.getThreadPool(), solve, raw, bound, difficulty, progress, limit
            )
        except PowError as e:
            raise ProtocolFailure("no proof-of-work solution found") from e
        return {"challenge": challenge["challenge"], "nonce": b64encode(nonce)}


def _retry_after(value: bytes) -> int | None:
    """Whole seconds, or None for anything else (an absurd value is not repeated)."""
    if not value.isdigit() or len(value) > 6:
        return None
    seconds = int(value)
    return seconds if seconds <= MAX_RETRY_AFTER else None


class StreamReader(Protocol):
    """What read_stream feeds: v1's ResponseReader (SSE) or v2's (chunked OHTTP), whose
    final event comes out of `end`."""

    def feed(self, data: bytes) -> list[dict[str, Any]]: ...

    def end(self) -> list[dict[str, Any]] | None: ...

    @property
    def progress(self) -> int:
        """Grows with what proves the stream alive: the idle wait restarts only then."""
        ...


async def read_stream(
    response: Any, reader: StreamReader, clock: IReactorTime, on_chunk: Callable[[dict[str, Any]], None] | None = None
) -> ChatResult:
    """Open the stream as it arrives; a stream silent for STREAM_IDLE_TIMEOUT is cut (truncated)."""
    result = ChatResult()

    def take(chunks: list[dict[str, Any]]) -> None:
        for chunk in chunks:
            result.chunks.append(chunk)
            if chunk["type"] == "delta":
                result.text += chunk["text"]
            elif chunk["type"] == "done":
                result.finish_reason = chunk["finish_reason"]
                result.usage = chunk["usage"]
            if on_chunk is not None:
                on_chunk(chunk)

    def on_data(data: bytes) -> None:
        before = reader.progress
        take(reader.feed(data))
        if reader.progress != before:
            idle.reset(STREAM_IDLE_TIMEOUT)

    body = BodyStream(on_data)
    idle = clock.callLater(STREAM_IDLE_TIMEOUT, body.stop)
    response.deliverBody(body)
    broken = False
    try:
        await body.done
    except StreamError as e:
        if e.kind == "truncated":
            raise TruncatedError("the stream was cut before its final chunk") from e
        raise ProtocolFailure(f"stream rejected: {e.kind}") from e
    except (ResponseFailed, PotentialDataLoss, ConnectionLost, ConnectionDone):
        broken = True  # the connection broke: what counts is whether the final chunk arrived whole
    finally:
        if idle.active():
            idle.cancel()
    try:
        take(reader.end() or [])
    except StreamError as e:
        if broken:
            raise TruncatedError("the connection broke before the final chunk") from e
        if e.kind == "truncated":
            raise TruncatedError("the stream ended before its final chunk") from e
        raise ProtocolFailure(f"stream rejected: {e.kind}") from e
    errors = [c for c in result.chunks if c["type"] == "error"]
    if errors:
        raise ServerError(error_code(errors[0]["code"]), retry_after=_sealed_retry_after(errors[0]))
    return result


async def read_stream_v2(
    response: Any, sealed: SealedV2, clock: IReactorTime, on_chunk: Callable[[dict[str, Any]], None] | None = None
) -> ChatResult:
    """A v2 answer: read_stream's, and StaleClock for the router's inner 401 stale with its date.
    A refusal's error event (inner status other than 200) is raised, not handed to `on_chunk`,
    as v1's plaintext refusals: a stale one is followed by the answer to the corrected request."""
    reader = ResponseReaderV2(sealed.context)

    def answer_only(chunk: dict[str, Any]) -> None:
        if on_chunk is not None and reader.status == 200:
            on_chunk(chunk)

    try:
        return await read_stream(response, reader, clock, answer_only)
    except ServerError as e:
        if reader.status == 401 and e.code == "stale" and reader.date is not None:
            raise StaleClock(reader.date) from e
        raise


def _sealed_retry_after(chunk: dict[str, Any]) -> int | None:
    """A sealed `rate_limited` carries its wait inside: whole seconds, within the same bound."""
    value = chunk.get("retry_after")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RETRY_AFTER:
        return value
    return None
