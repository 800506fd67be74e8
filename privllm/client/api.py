"""
A client of protocol v1 on treq: fetch and verify the key set, seal, post, open the stream.

The key set is trusted only through the pinned identity key; TLS is checked too (against
the system roots, or a given certificate such as the dev router's self-signed one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import treq
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError, TimeoutError
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from ..body import BodyStream, BytesProducer
from ..endpoints import AgentEndpoints
from ..protocol.encoding import b64decode, b64encode, dumps
from ..protocol.keyset import KeySetError, PublishedKey, choose_key, verify_keyset
from ..protocol.pow import CHALLENGE_SIZE, solve
from ..protocol.request import Encapsulation, encapsulate, new_request_id, seal_request
from ..protocol.response import ResponseReader
from ..protocol.stream import StreamError


class ClientError(Exception):
    exit_code = 1


class NetworkError(ClientError):
    """The router could not be reached, or the connection broke."""

    exit_code = 3


class ProtocolFailure(ClientError):
    """The router's answer broke the protocol: bad signature, tampered or malformed chunk."""

    exit_code = 4


class TruncatedError(ClientError):
    """The stream ended without a verified final chunk."""

    exit_code = 5


class ServerError(ClientError):
    """The router refused the request (plaintext error) or ended the stream with a sealed error."""

    exit_code = 6

    def __init__(
        self,
        code: str,
        status: int | None = None,
        retry_after: str | None = None,
        date: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"server error {code}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.date = date
        self.details = details or {}  # the whole JSON reply, e.g. a proof-of-work challenge


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
        self._root = ssl.Certificate.loadPEM(root_pem) if root_pem else None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        # Twisted's Agent speaks HTTP/1.1 only, so no ALPN offer of h2 here.
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._root)


MAX_DIFFICULTY = 32  # 2**32 hashes: a router asking more is not one to spend the battery on

NETWORK_ERRORS = (ConnectError, DNSLookupError, TimeoutError, ConnectionLost, ResponseFailed)


class PrivllmClient:
    def __init__(
        self,
        reactor: Any,
        base_url: str,
        pinned_identity: bytes,
        device_private_key: bytes,
        trust_root_pem: bytes | None = None,
        on_pow: Callable[[int, int], None] | None = None,
    ) -> None:
        """`on_pow(difficulty, tries)` is told how a proof of work the router asked for is going."""
        self._on_pow = on_pow
        self._reactor = reactor
        self._base = base_url.rstrip("/")
        self._chat_url = (self._base + "/api/chat").encode("ascii")
        self._pin = pinned_identity
        self._device = device_private_key
        # Keep connections open between chats, as an app would: no TLS handshake per message.
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        endpoints = AgentEndpoints(reactor, PinnedRootPolicy(trust_root_pem))
        agent: Any = Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool)
        self._agent = agent
        self._http = treq.client.HTTPClient(agent)
        self._keys: list[PublishedKey] | None = None
        self._prepared: Encapsulation | None = None

    def close(self) -> Deferred[None]:
        """Close the kept-alive connections (a client that is done, or a test that must leave none)."""
        return self._pool.closeCachedConnections()

    async def fetch_keys(self) -> list[PublishedKey]:
        try:
            response = await self._http.get(self._base + "/api/pubkey", timeout=30)
            raw = await treq.content(response)
        except NETWORK_ERRORS as e:
            raise NetworkError(f"cannot fetch the key set: {e.__class__.__name__}") from e
        if response.code != 200:
            raise ServerError("pubkey_unavailable", response.code)
        try:
            self._keys = verify_keyset(raw, self._pin)
        except KeySetError as e:
            raise ProtocolFailure(f"key set rejected: {e}") from e
        return self._keys

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
        """Send one chat; `on_chunk` sees every opened chunk as it arrives. Retries once on unknown_key."""
        for attempt in range(2):
            keys = self._keys if self._keys is not None else await self.fetch_keys()
            try:
                key = choose_key(keys, int(self._reactor.seconds()))
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
            self._keys = None
        raise AssertionError("unreachable")

    async def post(self, body: dict[str, Any] | bytes, headers: dict[bytes, list[bytes]] | None = None) -> Any:
        """POST a request body; straight to the Agent, as treq's conveniences add to time to first token."""
        data = body if isinstance(body, bytes) else dumps(body)
        hdrs = {b"Content-Type": [b"application/json"], b"Accept": [b"text/event-stream"], **(headers or {})}
        request = self._agent.request(b"POST", self._chat_url, Headers(hdrs), BytesProducer(data))
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
                result = await read_stream(response, ResponseReader(sealed), on_chunk)
                self.prepare(key)  # idle now, until the next message
                return result
            try:
                await _raise_plaintext_error(response)
            except ServerError as e:
                if e.code != "pow_required" or attempt == 2:
                    raise
                body = {**sealed.body, "pow": await self._solve(e.details, sealed.body["request_id"])}
        raise AssertionError("unreachable")

    async def _solve(self, challenge: dict[str, Any], request_id: str) -> dict[str, str]:
        """The router is under stress and asks for proof of work: find it off the reactor thread."""
        try:
            raw = b64decode(challenge["challenge"], CHALLENGE_SIZE)
            difficulty = int(challenge["difficulty"])
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolFailure("malformed proof-of-work challenge") from e
        if not 0 < difficulty <= MAX_DIFFICULTY:
            raise ProtocolFailure("proof-of-work difficulty out of range")
        report = self._on_pow

        def progress(tries: int) -> None:
            if report is not None:
                self._reactor.callFromThread(report, difficulty, tries)

        nonce = await deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), solve, raw, request_id, difficulty, progress
        )
        return {"challenge": challenge["challenge"], "nonce": b64encode(nonce)}


async def _raise_plaintext_error(response: Any) -> None:
    raw = await treq.content(response)
    try:
        details = json.loads(raw)
        code = str(details["error"])
    except (ValueError, KeyError, TypeError):
        details, code = {}, "unknown"
    headers = response.headers
    retry = headers.getRawHeaders("retry-after")
    date = headers.getRawHeaders("date")
    raise ServerError(code, response.code, retry[0] if retry else None, date[0] if date else None, details)


async def read_stream(
    response: Any, reader: ResponseReader, on_chunk: Callable[[dict[str, Any]], None] | None = None
) -> ChatResult:
    result = ChatResult()

    def on_data(data: bytes) -> None:
        for chunk in reader.feed(data):
            result.chunks.append(chunk)
            if chunk["type"] == "delta":
                result.text += str(chunk.get("text", ""))
            elif chunk["type"] == "done":
                result.finish_reason = chunk.get("finish_reason")
                result.usage = chunk.get("usage") or {}
            if on_chunk is not None:
                on_chunk(chunk)

    body = BodyStream(on_data)
    response.deliverBody(body)
    try:
        await body.done
    except StreamError as e:
        if e.kind == "truncated":
            raise TruncatedError("the stream was cut before its final chunk") from e
        raise ProtocolFailure(f"stream rejected: {e.kind}") from e
    except Exception as e:  # the connection broke: what counts is whether the final chunk arrived
        if not reader.finished:
            raise TruncatedError("the connection broke before the final chunk") from e
    try:
        reader.end()
    except StreamError as e:
        raise TruncatedError("the stream ended before its final chunk") from e
    errors = [c for c in result.chunks if c["type"] == "error"]
    if errors:
        raise ServerError(str(errors[0].get("code", "unknown")))
    return result
