"""
The admission state shared in Redis by every router process and host (config state.backend
= "redis"): a thin Twisted adapter around the scripts of privllm.state.lua.

Client: txredisapi, Twisted-native (no thread pool, no asyncio bridge), pure Python with
hiredis as its C reply parser; it keeps a pool of `state.pool_size` connections per worker
and reconnects each with backoff by itself (Twisted's ClientService). Its own reply timeout
aborts a connection that stops answering, so the pool reconnects; on top of it every call
here has a deadline (`state.timeout`) that also covers waiting for a connection, since
txredisapi would otherwise queue a call until one is up. Past the deadline, or on any Redis
error, a call fails with StateUnavailable: admission refuses with 503 before decryption.

Each admission step is one script call (EVAL first on each connection, then EVALSHA, EVAL
again after NOSCRIPT: txredisapi's eval), so a chat costs three: screen, commit, release.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import txredisapi
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IReactorUNIX, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..config.schema import State
from ..keys.files import KeyFileError, read_secret, write_secret
from ..protocol.admission import Ask, Lease, Load, SealedRefusal
from ..protocol.errors import RATE_LIMITED, REPLAY, STALE, UNAVAILABLE, RequestRejected
from . import lua
from .errors import StateError
from .hashing import ROOT_SIZE, Namer
from .interface import DEVICE_LIMITED, OVERLOADED, Limits, PowSpent, StateUnavailable

__all__ = [
    "CONNECT_TIMEOUT",
    "LEASE_TOKEN_SIZE",
    "PREFIX",
    "RECONNECT_FIRST",
    "RECONNECT_MAX",
    "SAFE_CONFIG",
    "START_TIMEOUT",
    "STATE_KEY",
    "UNAVAILABLE_ERRORS",
    "AuthWithoutTimeout",
    "Held",
    "RedisState",
    "RedisStateError",
    "RedisUnreachable",
    "connect",
    "endpoint",
    "password",
    "pool",
    "start",
    "state_key",
]

log = Logger()

PREFIX = "privllm:"
STATE_KEY = "state.key"
LEASE_TOKEN_SIZE = 16
CONNECT_TIMEOUT = 5.0  # seconds, per connection attempt
START_TIMEOUT = 10.0  # seconds for the first connection and the checks at start
# Reconnect backoff: from 0.2 s, times e each failure, at most 2 s (txredisapi's defaults are
# 1 s and 10 s: too slow for a service that refuses every chat meanwhile).
RECONNECT_FIRST = 0.2
RECONNECT_MAX = 2.0
SAFE_CONFIG = {"save": "", "appendonly": "no", "maxmemory-policy": "noeviction"}
# Failures that mean "Redis did not answer properly": refuse, never guess.
UNAVAILABLE_ERRORS = (
    txredisapi.RedisError,
    defer.TimeoutError,
    defer.CancelledError,
    error.ConnectError,
    error.ConnectionClosed,
    ConnectionError,
)


class RedisStateError(StateError):
    """Redis is unsafe or misconfigured at start: the router must not serve."""

    code = "redis_state"


class RedisUnreachable(RedisStateError):
    """Redis did not answer properly at start (down, slow, or refusing the password): try again."""

    code = "redis_unreachable"


class AuthWithoutTimeout(txredisapi.RedisProtocol):
    """txredisapi takes an AUTH that times out (Redis paused) for a wrong password and stops
    reconnecting for good; without a reply timeout on AUTH it just waits, and the callers'
    own deadline still bounds every request."""

    def auth(self, password: str, username: str | None = None) -> Deferred[Any]:
        return self.execute_command("AUTH", username, password, apply_timeout=False)


def state_key(config: State, state_dir: str, dev: bool, create: bool = True) -> bytes:
    """The root of the hashing keys, shared by the routers: read (mode-checked), or, unless
    `create` is false (a worker: its parent made it), created in dev or at the default path
    when absent."""
    path = config.key_file or os.path.join(state_dir, STATE_KEY)
    if create and not os.path.lexists(path) and (dev or not config.key_file):
        write_secret(path, os.urandom(ROOT_SIZE))
    root = read_secret(path, ROOT_SIZE)
    if len(root) != ROOT_SIZE:
        raise KeyFileError(f"state key {path} must hold exactly {ROOT_SIZE} bytes")
    return root


def password(config: State) -> str | None:
    if not config.password_file:
        return None
    secret = read_secret(config.password_file).decode("utf-8")
    return secret[:-1] if secret.endswith("\n") else secret


def endpoint(config: State, reactor: IReactorTime) -> IStreamClientEndpoint:
    """unix:///path, or rediss://host:port over TLS (the state.ca, else the system's CAs).
    `reactor`: also an IReactorUNIX or an IReactorTCP, as the url asks."""
    url = urlsplit(config.url)
    if url.scheme == "unix" and not url.netloc and url.path:
        return UNIXClientEndpoint(IReactorUNIX(reactor), url.path, timeout=CONNECT_TIMEOUT)
    if url.scheme == "rediss" and url.hostname and url.port and not url.path.strip("/"):
        if config.ca:
            with open(config.ca, "rb") as f:
                trust = Certificate.loadPEM(f.read())
        else:
            trust = platformTrust()
        tls = optionsForClientTLS(url.hostname, trustRoot=trust)
        tcp = HostnameEndpoint(reactor, url.hostname, url.port, timeout=CONNECT_TIMEOUT)
        return wrapClientTLS(tls, tcp)
    raise RedisStateError("config state.url: unix:///path/redis.sock or rediss://host:port (plain redis:// is refused)")


def pool(config: State, reactor: IReactorTime) -> txredisapi.RedisFactory:
    factory = txredisapi.RedisFactory(
        config.url,
        None,
        config.pool_size,
        isLazy=True,
        handler=txredisapi.ConnectionHandler,
        password=password(config),
        replyTimeout=config.timeout,
        username=config.user or None,
    )
    factory.protocol = AuthWithoutTimeout
    factory.initialDelay = RECONNECT_FIRST
    factory.maxDelay = RECONNECT_MAX
    factory.startConnecting(endpoint(config, reactor))
    return factory


@dataclass
class Held:
    """A lease this worker holds, in memory only: renewal moves it into each epoch's sets."""

    address: str
    device: bytes
    sets: tuple[str, str]  # where it is: address, device
    before: tuple[str, str]  # where it was before the last renewal, in case that one failed


class RedisState:
    """privllm.state.interface.AdmissionState in Redis. Call `start` before serving."""

    def __init__(self, factory: Any, namer: Namer, limits: Limits, config: State, reactor: IReactorTime) -> None:
        self.factory = factory
        self.client = factory.handler
        self.namer = namer
        self.limits = limits
        self.timeout = config.timeout
        self.lease_ttl = config.lease_ttl
        self.allow_unsafe = config.allow_unsafe_redis
        self.reactor = reactor
        # lease token -> its address and device, and the stream sets it is or may be in
        self.held: dict[bytes, Held] = {}
        self._load = Load(0, 0.0)
        self._load_at = float("-inf")
        self._renewal = LoopingCall(self._renew)
        self._renewal.clock = reactor
        self.refused: str | None = None  # why Redis refused the connection (AUTH), if it did
        self.other_key = False  # Redis holds another router's key check: every chat is refused
        if factory.deferred is not None:  # fires when the pool is full, fails if AUTH is refused
            factory.deferred.addErrback(self._connection_refused)

    def _connection_refused(self, failure: Any) -> None:
        self.refused = failure.getErrorMessage()

    async def start(self) -> None:
        """Wait for Redis, check it keeps nothing on disk and evicts nothing, load the scripts,
        and start renewing leases. Fails with RedisStateError."""
        try:
            config = await self._checked(Deferred.fromCoroutine(self._config()), START_TIMEOUT)
            for script in lua.SCRIPTS:
                await self._checked(self.client.script_load(script), START_TIMEOUT)
            shared = await self._checked(self._same_key(), START_TIMEOUT)
        except StateUnavailable as e:
            why = self.refused or str(e)
            raise RedisUnreachable(f"Redis at state.url did not answer properly: {why}") from e
        unsafe = [
            f"{name} is {config[name]!r}, must be {want!r}"
            for name, want in SAFE_CONFIG.items()
            if config[name] != want
        ]
        if unsafe and not self.allow_unsafe:
            raise RedisStateError(
                "Redis is unsafe for the replay window (" + "; ".join(unsafe) + "): it must not persist to disk"
                " (save '', appendonly no) nor evict (maxmemory-policy noeviction); set state.allow_unsafe_redis"
                " only if you know why"
            )
        if not shared:
            raise RedisStateError(
                "the routers sharing this Redis use different state keys (state.key_file): each must hold the"
                " same secret, else one router's entries are invisible to the others (replays would pass);"
                " after replacing it on every router, delete privllm:keycheck"
            )
        if unsafe:
            log.warn(
                "Redis is unsafe for the replay window, allowed by state.allow_unsafe_redis: {reason}",
                reason="; ".join(unsafe),
            )
        self._renewal.start(self.lease_ttl / 3, now=False)

    async def _config(self) -> dict[str, str]:
        values = {}
        for name in SAFE_CONFIG:
            reply = await self.client.execute_command("CONFIG", "GET", name)
            if not isinstance(reply, list) or len(reply) != 2:
                raise txredisapi.InvalidResponse(f"CONFIG GET {name}")
            values[name] = "" if reply[1] is None else str(reply[1])
        return values

    def _same_key(self) -> Deferred[bool]:
        """Whether this router hashes with the same root as the first one that used this Redis
        (a keyed hash of a constant: it reveals nothing)."""
        check = self.namer.check()
        d = self.client.eval(lua.KEY_CHECK, [PREFIX + "keycheck"], [check])
        return d.addCallback(lambda stored: stored == check)

    def stop(self) -> Deferred[None]:
        """Stop renewing and close the pool; the leases still held expire."""
        if self._renewal.running:
            self._renewal.stop()
        return self.factory.disconnect()

    def screen(self, ask: Ask) -> Deferred[None]:
        keys, args = self._screen_call(ask)
        d = self._run(lua.SCREEN, keys, args)
        return d.addCallback(self._screened, ask)

    def _screen_call(self, ask: Ask) -> tuple[list[str], list[object]]:
        limits, now = self.limits, ask.now
        address = self.namer.names(b"address", ask.address.encode(), now)
        spent = self.namer.names(b"pow", ask.pow_token or b"", now)
        replay, replay_ahead = self._replay_names(ask)
        second = int(now)
        budget = limits.address_budget(ask.relay)
        keys = [
            PREFIX + "replay",
            *(PREFIX + "replay:" + n for n in address[:2]),
            *(PREFIX + "rate:" + n for n in address[:2]),
            PREFIX + "streams",
            *(PREFIX + "streams:" + n for n in address[:2]),
            PREFIX + "pow:" + spent[0],
            PREFIX + "fresh",
            PREFIX + "floor",
            *(f"{PREFIX}load:{second - i}" for i in range(lua.LOAD_SECONDS)),
            PREFIX + "pow:" + spent[1],
            PREFIX + "pow:" + spent[2],
            PREFIX + "keycheck",
        ]
        interval = 1000.0 / budget.rate
        args: list[object] = [
            int(now * 1000),
            repr(interval),
            repr(interval * (budget.burst - 1)),
            int(ask.refusal is not None),
            limits.max_streams,
            budget.streams,
            int(ask.pow_token is not None),
            ask.pow_expires,
            *replay,
            limits.replay_window,
            limits.replay_future_skew,
            limits.replay_max_entries,
            budget.replay_entries,
            ask.timestamp,
            *replay_ahead,
            self.namer.check(),
        ]
        return keys, args

    def _screened(self, reply: object, ask: Ask) -> None:
        code, retry, active, total = self._integers(reply, 4)
        self._load, self._load_at = Load(active, total / lua.LOAD_SECONDS), ask.now
        if code == lua.OK:
            return
        if code == lua.RATE_LIMITED:
            raise RequestRejected(RATE_LIMITED, retry_after=retry, reason="address_rate")
        if code == lua.ADDRESS_STREAMS:
            raise RequestRejected(RATE_LIMITED, retry_after=retry, reason="stream_cap")
        if code == lua.REFUSED and ask.refusal is not None:
            raise ask.refusal
        if code == lua.POW_SPENT:
            raise PowSpent()
        self._refuse(code, retry)

    def commit(self, ask: Ask, device: bytes) -> Deferred[Lease | SealedRefusal]:
        limits, now = self.limits, ask.now
        address = self.namer.names(b"address", ask.address.encode(), now)
        devices = self.namer.names(b"device", device, now)
        replay, replay_ahead = self._replay_names(ask)
        token = os.urandom(LEASE_TOKEN_SIZE)
        budget = limits.address_budget(ask.relay)
        keys = [
            PREFIX + "replay",
            *(PREFIX + "replay:" + n for n in address[:2]),
            *(PREFIX + "rate:" + n for n in devices[:2]),
            PREFIX + "streams",
            *(PREFIX + "streams:" + n for n in address[:2]),
            *(PREFIX + "streams:" + n for n in devices[:2]),
            PREFIX + "fresh",
            PREFIX + "floor",
        ]
        interval = 1000.0 / limits.device_rate
        args: list[object] = [
            int(now * 1000),
            *replay,
            ask.timestamp,
            limits.replay_window,
            limits.replay_future_skew,
            limits.replay_max_entries,
            budget.replay_entries,
            repr(interval),
            repr(interval * (limits.device_burst - 1)),
            limits.max_streams,
            limits.max_streams_per_device,
            budget.streams,
            token.hex(),
            int((now + self.lease_ttl) * 1000),
            *replay_ahead,
        ]
        lease = Lease(token, ask.address, device)
        held = Held(ask.address, device, (keys[6], keys[8]), (keys[6], keys[8]))

        def committed(reply: object) -> Lease | SealedRefusal:
            code, retry, active = self._integers(reply, 3)
            self._load = Load(active, self._load.rate)
            if code == lua.OK:
                self.held[token] = held
                return lease
            if code == lua.DEVICE_LIMITED:
                return SealedRefusal("rate_limited", DEVICE_LIMITED, retry_after=retry, reason="device_rate")
            if code == lua.OVERLOADED:
                return OVERLOADED
            self._refuse(code, retry)

        return self._run(lua.COMMIT, keys, args).addCallback(committed)

    def release(self, lease: Lease) -> None:
        held = self.held.pop(lease.token, None)
        if held is None:
            return
        d = self._run(lua.RELEASE, [PREFIX + "streams", *dict.fromkeys(held.sets + held.before)], [lease.token.hex()])
        d.addErrback(lambda f: f.trap(StateUnavailable))  # lost: the lease expires by itself

    def load(self, now: float) -> Load:
        if now - self._load_at >= lua.LOAD_SECONDS:  # no request seen for a while
            return Load(self._load.active_streams, 0.0)
        return self._load

    def replay_entries(self, now: float) -> Deferred[int]:
        """The shared window's live entries (scored by their expiry, in seconds)."""
        count = self.client.zcount(PREFIX + "replay", f"({int(now)}", "+inf")
        return self._checked(count, self.timeout)

    def _renew(self) -> Deferred[object] | None:
        if not self.held:
            return None
        now = self.reactor.seconds()
        keys = [PREFIX + "streams"]
        for held in self.held.values():
            current = (
                self._stream_set(b"address", held.address.encode(), now),
                self._stream_set(b"device", held.device, now),
            )
            keys += [*held.sets, *current]
            held.before, held.sets = held.sets, current
        expires = int((now + self.lease_ttl) * 1000)
        d = self._run(lua.RENEW, keys, [int(now * 1000), expires, *(t.hex() for t in self.held)])
        return d.addErrback(lambda f: f.trap(StateUnavailable))  # retried at the next tick

    def _stream_set(self, kind: bytes, value: bytes, now: float) -> str:
        return PREFIX + "streams:" + self.namer.name(kind, value, self.namer.epoch(now))

    def _replay_names(self, ask: Ask) -> tuple[list[str], list[str]]:
        """The request id's and encapsulated key's names: [current, previous] of each, then
        [next] of each (where a router whose clock is ahead wrote them)."""
        rid = self.namer.names(b"request-id", ask.request_id.encode(), ask.now)
        enc = self.namer.names(b"encapsulated-key", ask.encapsulated_key, ask.now)
        return [rid[0], rid[1], enc[0], enc[1]], [rid[2], enc[2]]

    def _run(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Deferred[Any]:
        return self._checked(self.client.eval(script, list(keys), list(args)), self.timeout)

    def _checked(self, d: Deferred[Any], timeout: float) -> Deferred[Any]:
        """The call's answer within `timeout`, else StateUnavailable (the call is cancelled)."""
        d.addTimeout(timeout, self.reactor)

        def unavailable(failure: Any) -> None:
            failure.trap(*UNAVAILABLE_ERRORS)
            raise StateUnavailable(failure.getErrorMessage() or failure.type.__name__)

        return d.addErrback(unavailable)

    @staticmethod
    def _integers(reply: object, count: int) -> list[int]:
        if not isinstance(reply, list) or len(reply) != count or not all(type(v) is int for v in reply):
            raise StateUnavailable("a script answered nonsense")
        return reply

    def _refuse(self, code: int, retry: int) -> NoReturn:
        """Every other answer is a refusal (or nonsense: StateUnavailable)."""
        if code == lua.OTHER_KEY:
            if not self.other_key:  # once: the operator must fix the key files (docs/deployment.md)
                log.critical("shared state: another router's state key reached this Redis first; refusing every chat")
            self.other_key = True
            raise RequestRejected(UNAVAILABLE, reason="state_unavailable")
        if code == lua.STREAM_CAP:
            raise RequestRejected(UNAVAILABLE, reason="stream_cap")
        if code == lua.REPLAY_FULL:
            raise RequestRejected(UNAVAILABLE, reason="replay_room")
        if code == lua.REPLAY_ROOM:
            raise RequestRejected(RATE_LIMITED, retry_after=retry, reason="replay_room")
        if code == lua.REPLAY:
            raise RequestRejected(REPLAY, reason="replay")
        if code == lua.STALE:
            raise RequestRejected(STALE)
        raise StateUnavailable(f"a script answered code {code}")


async def start(config: State, limits: Limits, state_dir: str, reactor: IReactorTime, dev: bool = False) -> RedisState:
    """Connect, check and start the shared state; fails with RedisStateError or KeyFileError."""
    namer = Namer(state_key(config, state_dir, dev), config.key_rotation)
    factory = pool(config, reactor)
    state = RedisState(factory, namer, limits, config, reactor)
    try:
        await state.start()
    except BaseException:
        await state.stop()
        raise
    return state


def connect(
    config: State, limits: Limits, state_dir: str, reactor: IReactorTime, dev: bool = False
) -> Deferred[RedisState]:
    return Deferred.fromCoroutine(start(config, limits, state_dir, reactor, dev))
