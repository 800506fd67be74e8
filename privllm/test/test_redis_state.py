"""
The admission state in Redis, against a real redis-server with the real reactor: the same
behaviour as the memory backend (one set of tests for both, the Redis one through two
RedisState instances, i.e. two routers), then what only Redis does: hashing, the checks at
start, failures (stopped, restarted, paused) and TLS.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from privllm.config.schema import State
from privllm.keys import pki
from privllm.keys.files import write_secret
from privllm.protocol.admission import Ask, Lease, SealedRefusal
from privllm.protocol.errors import STALE, RequestRejected
from privllm.state import lua
from privllm.state.interface import DEVICE_LIMITED, OVERLOADED, AdmissionState, Limits, PowSpent, StateUnavailable
from privllm.state.memory import MemoryState
from privllm.state.redis import RedisState, RedisStateError, connect

from .redis_server import USER, RedisServer, available

LIMITS = Limits(
    address_rate=1.0,
    address_burst=100,
    device_rate=1.0,
    device_burst=100,
    max_streams=100,
    max_streams_per_device=100,
    max_streams_per_address=100,
    replay_window=30,
    replay_future_skew=5,
    replay_max_entries=1000,
    replay_max_per_address=1000,
    pow_max_spent=1000,
    max_addresses=1000,
    max_devices=1000,
    relay_rate=1.0,
    relay_burst=100,
    relay_streams=100,
    relay_replay_entries=1000,
)
PASSWORD = "correct-horse-battery-staple"


def limits(**changes: Any) -> Limits:
    return Limits(**{**LIMITS.__dict__, **changes})


def ask(n: int, address: str = "192.0.2.1", now: float | None = None, **changes: Any) -> Ask:
    now = time.time() if now is None else now
    fields: dict[str, Any] = {
        "request_id": f"request-{n:04d}-{os.urandom(4).hex()}",
        "encapsulated_key": os.urandom(32),
        "timestamp": int(now),
    }
    fields.update(changes)
    return Ask(address, now, **fields)


def device(n: int) -> bytes:
    return bytes([n]) * 32


class Behaviour:
    """The behaviour both backends share. `states` gives two states that share everything: two
    routers on one Redis, or the one MemoryState twice."""

    assertEqual: Any
    assertIs: Any
    assertIsInstance: Any
    assertTrue: Any
    failureResultOf: Any

    async def states(self, limits: Limits = LIMITS) -> tuple[AdmissionState, AdmissionState]:
        raise NotImplementedError

    async def rejected(
        self, d: Deferred[Any], status: int, retry: int | None = None, *, reason: str | None
    ) -> RequestRejected:
        """`reason`: the refusals metric's label, which both backends must give alike."""
        try:
            await d
        except RequestRejected as e:
            self.assertEqual((e.rejection.status, e.reason), (status, reason))
            if retry is not None:
                self.assertEqual(e.retry_after, retry)
            return e
        raise AssertionError(f"not rejected, expected {status}")

    async def admit(self, state: AdmissionState, request: Ask, dev: bytes = b"") -> Lease | SealedRefusal:
        await state.screen(request)
        result: Lease | SealedRefusal = await state.commit(request, dev or device(1))
        return result

    async def test_a_replay_is_refused_by_the_other_router(self) -> None:
        a, b = await self.states()
        request = ask(1)
        self.assertIsInstance(await self.admit(a, request), Lease)
        await self.rejected(b.screen(request), 409, reason="replay")
        await self.rejected(a.screen(request), 409, reason="replay")

    async def test_the_request_id_alone_and_the_key_alone_are_replays(self) -> None:
        a, b = await self.states()
        first = ask(1)
        await self.admit(a, first)
        await self.rejected(b.screen(ask(2, request_id=first.request_id)), 409, reason="replay")
        await self.rejected(b.screen(ask(3, encapsulated_key=first.encapsulated_key)), 409, reason="replay")

    async def test_a_replay_that_raced_is_refused_at_commit(self) -> None:
        a, b = await self.states()
        request = ask(1)
        await a.screen(request)
        await b.screen(request)
        self.assertIsInstance(await a.commit(request, device(1)), Lease)
        await self.rejected(b.commit(request, device(1)), 409, reason="replay")

    async def test_an_address_fills_its_share_alone_then_the_window_fills_for_all(self) -> None:
        a, b = await self.states(limits(replay_max_entries=6, replay_max_per_address=4))
        for n in range(2):
            await self.admit(a if n else b, ask(n))
        await self.rejected(a.screen(ask(9)), 429, retry=30 + 5 + 1, reason="replay_room")
        self.assertEqual(await a.replay_entries(time.time()), 4)
        await self.admit(b, ask(10, address="192.0.2.2"))
        await self.rejected(b.screen(ask(11, address="192.0.2.3")), 503, reason="replay_room")
        self.assertEqual(await b.replay_entries(time.time()), 6)
        self.assertEqual(await b.replay_entries(time.time() + 30 + 5 + 1), 0)  # all expired

    async def test_a_share_filled_between_screen_and_commit_is_refused_at_commit(self) -> None:
        a, b = await self.states(limits(replay_max_per_address=2))
        first, second = ask(1), ask(2)
        await a.screen(first)
        await b.screen(second)
        self.assertIsInstance(await a.commit(first, device(1)), Lease)
        await self.rejected(b.commit(second, device(2)), 429, retry=30 + 5 + 1, reason="replay_room")

    async def test_address_rate_limit_across_routers(self) -> None:
        a, b = await self.states(limits(address_burst=2))
        now = time.time()
        await a.screen(ask(1, now=now))
        await b.screen(ask(2, now=now))
        await self.rejected(a.screen(ask(3, now=now)), 429, retry=1, reason="address_rate")
        await b.screen(ask(4, address="192.0.2.9", now=now))

    async def test_a_stateless_refusal_is_counted_then_sent(self) -> None:
        a, b = await self.states(limits(address_burst=1))
        now = time.time()
        refusal = RequestRejected(STALE)
        e = await self.rejected(a.screen(Ask("192.0.2.1", now, refusal=refusal)), 401, reason=None)
        self.assertIs(e, refusal)
        await self.rejected(b.screen(ask(2, now=now)), 429, reason="address_rate")

    async def test_device_rate_limit_across_routers_is_sealed(self) -> None:
        a, b = await self.states(limits(device_burst=2))
        now = time.time()
        for n, state in enumerate((a, b)):
            await self.admit(state, ask(n, address=f"192.0.2.{n}", now=now))
        refused = await self.admit(b, ask(5, address="192.0.2.7", now=now))
        self.assertEqual(refused, SealedRefusal("rate_limited", DEVICE_LIMITED, retry_after=1, reason="device_rate"))
        self.assertIsInstance(await self.admit(a, ask(6, address="192.0.2.8", now=now), device(2)), Lease)

    async def test_a_proof_of_work_is_spent_once_across_routers(self) -> None:
        a, b = await self.states()
        expires = int(time.time()) + 60
        await a.screen(ask(1, pow_token=b"t" * 16, pow_expires=expires))
        try:
            await b.screen(ask(2, pow_token=b"t" * 16, pow_expires=expires))
        except PowSpent:
            pass
        else:
            raise AssertionError("spent twice")
        await b.screen(ask(3, pow_token=b"u" * 16, pow_expires=expires))

    async def test_global_stream_cap_across_routers(self) -> None:
        a, b = await self.states(limits(max_streams=2))
        await self.admit(a, ask(1, address="192.0.2.1"), device(1))
        held = await self.admit(b, ask(2, address="192.0.2.2"), device(2))
        await self.rejected(a.screen(ask(3, address="192.0.2.3")), 503, reason="stream_cap")
        assert isinstance(held, Lease)
        b.release(held)
        await self.settle()
        self.assertIsInstance(await self.admit(a, ask(4, address="192.0.2.3"), device(3)), Lease)

    async def test_address_stream_cap_across_routers(self) -> None:
        a, b = await self.states(limits(max_streams_per_address=1))
        held = await self.admit(a, ask(1), device(1))
        await self.rejected(b.screen(ask(2)), 429, retry=1, reason="stream_cap")
        assert isinstance(held, Lease)
        a.release(held)
        await self.settle()
        self.assertIsInstance(await self.admit(b, ask(3), device(2)), Lease)

    async def test_device_stream_cap_and_a_full_one_at_commit_are_sealed_overloaded(self) -> None:
        a, b = await self.states(limits(max_streams_per_device=1, max_streams_per_address=1))
        await self.admit(a, ask(1, address="192.0.2.1"), device(1))
        self.assertEqual(await self.admit(b, ask(2, address="192.0.2.2"), device(1)), OVERLOADED)
        # both screened before either committed: the second commit finds the address full
        first, second = ask(3, address="192.0.2.3"), ask(4, address="192.0.2.3")
        await a.screen(first)
        await b.screen(second)
        self.assertIsInstance(await a.commit(first, device(3)), Lease)
        self.assertEqual(await b.commit(second, device(4)), OVERLOADED)

    async def test_a_relay_is_held_to_its_own_rate_a_client_to_the_address_rate(self) -> None:
        a, b = await self.states(limits(address_burst=2, relay_burst=5))
        now = time.time()
        for n in range(5):  # more than a client's burst, across routers
            await (a if n % 2 else b).screen(ask(n, now=now, relay=True))
        await self.rejected(a.screen(ask(5, now=now, relay=True)), 429, retry=1, reason="address_rate")
        # the same key as a client's: the relay's debt leaves it nothing
        await self.rejected(b.screen(ask(6, now=now)), 429, reason="address_rate")
        for n in range(2):
            await (a if n else b).screen(ask(7 + n, address="192.0.2.9", now=now))
        await self.rejected(a.screen(ask(9, address="192.0.2.9", now=now)), 429, retry=1, reason="address_rate")

    async def test_a_relay_is_held_to_its_own_stream_cap(self) -> None:
        a, b = await self.states(limits(max_streams_per_address=1, relay_streams=3))
        held = [await self.admit(a if n % 2 else b, ask(n, relay=True), device(n)) for n in range(3)]
        self.assertTrue(all(isinstance(lease, Lease) for lease in held))
        await self.rejected(a.screen(ask(3, relay=True)), 429, retry=1, reason="stream_cap")
        await self.rejected(b.screen(ask(4)), 429, retry=1, reason="stream_cap")  # a client at the same key
        lease = held[0]
        assert isinstance(lease, Lease)
        b.release(lease)  # b took it: every lease is given back where it was counted
        await self.settle()
        self.assertIsInstance(await self.admit(a, ask(5, relay=True), device(5)), Lease)
        client = await self.admit(a, ask(6, address="192.0.2.9"), device(6))
        self.assertIsInstance(client, Lease)
        await self.rejected(b.screen(ask(7, address="192.0.2.9")), 429, retry=1, reason="stream_cap")

    async def test_a_relay_is_held_to_its_own_share_of_the_replay_window(self) -> None:
        a, b = await self.states(limits(replay_max_per_address=2, relay_replay_entries=6))
        for n in range(3):
            self.assertIsInstance(await self.admit(a if n % 2 else b, ask(n, relay=True), device(n)), Lease)
        await self.rejected(a.screen(ask(3, relay=True)), 429, retry=30 + 5 + 1, reason="replay_room")
        self.assertIsInstance(await self.admit(b, ask(4, address="192.0.2.9"), device(4)), Lease)
        await self.rejected(a.screen(ask(5, address="192.0.2.9")), 429, retry=30 + 5 + 1, reason="replay_room")
        self.assertEqual(await a.replay_entries(time.time()), 8)

    async def test_load_counts_requests_and_streams(self) -> None:
        a, _ = await self.states()
        now = time.time()
        for n in range(3):
            await self.admit(a, ask(n, address=f"192.0.2.{n}", now=now), device(n))
        load = a.load(now)
        self.assertEqual(load.active_streams, 3)
        self.assertEqual(load.rate, 0.3)

    async def settle(self) -> None:
        """Let a release (fire and forget) reach the state."""


class MemoryBehaviour(Behaviour, TestCase):
    async def states(self, limits: Limits = LIMITS) -> tuple[AdmissionState, AdmissionState]:
        state = MemoryState(limits)
        return state, state


class RedisTestCase(TestCase):
    password: str | None = PASSWORD

    def setUp(self) -> None:
        if not available():
            self.skipTest("redis-server is not installed (scripts/bootstrap.sh installs it)")
        self.directory = tempfile.mkdtemp(prefix="privllm-state-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.server = RedisServer(self.password)
        self.addCleanup(self.server.close)
        self.server.command("SET", "privllm:fresh", "1")  # as if it had served longer than the window
        self.password_file = os.path.join(self.directory, "redis.password")
        write_secret(self.password_file, (PASSWORD + "\n").encode())

    def config(self, **changes: Any) -> State:
        settings: dict[str, Any] = {
            "backend": "redis",
            "url": self.server.url,
            "user": USER if self.password else "",
            "password_file": self.password_file if self.password else "",
            "key_file": "",  # <state_dir>/state.key, created by the first and shared
            "timeout": 0.5,
        }
        settings.update(changes)
        return State(**settings)

    async def connect(self, limits: Limits = LIMITS, **changes: Any) -> RedisState:
        state = await connect(self.config(**changes), limits, self.directory, reactor)
        self.addCleanup(state.stop)
        return state


class RedisBehaviour(Behaviour, RedisTestCase):
    async def states(self, limits: Limits = LIMITS) -> tuple[AdmissionState, AdmissionState]:
        return await self.connect(limits), await self.connect(limits)

    async def settle(self) -> None:
        await deferLater(reactor, 0.05, lambda: None)


class ScriptAnswers(TestCase):
    """A script's answer that is not what the scripts send (another program on the keys, a
    version mismatch) fails closed: StateUnavailable, never a guess."""

    def test_nonsense_is_unavailable(self) -> None:
        for reply in (None, b"OK", [0, 0, 0], [0, 0, 0, 0, 0], [0, b"1", 0, 0], [0, 1.5, 0, 0], [True, 0, 0, 0]):
            with self.assertRaises(StateUnavailable, msg=repr(reply)):
                RedisState._integers(reply, 4)
        self.assertEqual(RedisState._integers([0, 1, 2, 3], 4), [0, 1, 2, 3])

    def test_an_unknown_code_is_unavailable(self) -> None:
        state = RedisState.__new__(RedisState)  # only the answer's reading is under test
        state.other_key = False
        with self.assertRaises(StateUnavailable):
            state._refuse(99, 0)
        with self.assertRaises(RequestRejected) as caught:
            state._refuse(lua.REPLAY, 0)
        self.assertEqual(caught.exception.rejection.status, 409)


class RedisOnly(RedisTestCase):
    async def test_nothing_in_redis_holds_a_value_in_clear(self) -> None:
        a = await self.connect(limits(max_streams_per_address=2))
        b = await self.connect()
        address, request = "198.51.100.77", ask(1, address="198.51.100.77", pow_token=b"P" * 16)
        request = ask(1, address=address, pow_token=os.urandom(16), pow_expires=int(time.time()) + 60)
        dev = os.urandom(32)
        await self.admit(a, request, dev)
        await self.admit(b, ask(2, address=address), dev)
        dump = self.server.dump()
        self.assertIn(b"privllm:replay", dump)  # the dump sees what there is
        values = [address.encode(), request.request_id.encode(), request.encapsulated_key, dev]
        assert request.pow_token is not None
        values.append(request.pow_token)
        for value in values:
            for form in (
                value,
                value.hex().encode(),
                base64.b64encode(value),
                base64.urlsafe_b64encode(value).rstrip(b"="),
            ):
                self.assertNotIn(form, dump)
        self.assertNotIn(b"198.51", dump)
        for key in dump.split(b"\n"):
            if key.startswith(b"privllm:"):
                self.assertTrue(
                    key.startswith(
                        (
                            b"privllm:replay",
                            b"privllm:rate:",
                            b"privllm:streams",
                            b"privllm:pow:",
                            b"privllm:fresh",
                            b"privllm:floor",
                            b"privllm:keycheck",
                            b"privllm:load:",
                        )
                    ),
                    key,
                )

    async def admit(self, state: RedisState, request: Ask, dev: bytes) -> Lease | SealedRefusal:
        await state.screen(request)
        result: Lease | SealedRefusal = await state.commit(request, dev)
        return result

    async def test_an_entry_of_the_previous_epoch_is_found(self) -> None:
        a = await self.connect(key_rotation=1)  # a boundary every second
        now = int(time.time()) + 1 - 0.2  # just before one
        request = ask(1, now=now, timestamp=int(now))
        await self.admit(a, request, device(1))
        later = Ask(
            request.address, now + 1, request_id=request.request_id, encapsulated_key=b"x" * 32, timestamp=int(now)
        )
        with self.assertRaises(RequestRejected) as caught:
            await a.screen(later)
        self.assertEqual(caught.exception.rejection.status, 409)

    async def test_proof_of_work_spent_in_the_previous_epoch_stays_spent(self) -> None:
        a = await self.connect(key_rotation=1)
        now = int(time.time()) + 1 - 0.2
        token = os.urandom(16)
        await a.screen(ask(1, now=now, pow_token=token, pow_expires=int(now) + 60))
        with self.assertRaises(PowSpent):  # the next epoch: its name changed, its spending did not
            await a.screen(ask(2, now=now + 0.4, pow_token=token, pow_expires=int(now) + 60))

    async def test_gcra_reads_the_previous_epochs_debt(self) -> None:
        a = await self.connect(limits(address_burst=1), key_rotation=1)
        now = int(time.time()) + 1 - 0.2
        await a.screen(ask(1, now=now))
        with self.assertRaises(RequestRejected) as caught:
            await a.screen(ask(2, now=now + 0.4))
        self.assertEqual(caught.exception.retry_after, 1)

    async def test_a_crashed_routers_leases_expire(self) -> None:
        crashed = await self.connect(limits(max_streams=1), lease_ttl=1)
        held = await self.admit(crashed, ask(1), device(1))
        self.assertIsInstance(held, Lease)
        crashed.stop()  # renewal stops, the lease is never released
        other = await self.connect(limits(max_streams=1), lease_ttl=1)
        with self.assertRaises(RequestRejected):
            await other.screen(ask(2, address="192.0.2.2"))
        await deferLater(reactor, 1.2, lambda: None)
        self.assertIsInstance(await self.admit(other, ask(3, address="192.0.2.3"), device(2)), Lease)

    async def test_a_living_routers_leases_are_renewed(self) -> None:
        living = await self.connect(limits(max_streams=1), lease_ttl=1)
        self.assertIsInstance(await self.admit(living, ask(1), device(1)), Lease)
        await deferLater(reactor, 2.5, lambda: None)
        with self.assertRaises(RequestRejected) as caught:
            await living.screen(ask(2, address="192.0.2.2"))
        self.assertEqual(caught.exception.rejection.status, 503)

    async def test_a_renewed_lease_counts_against_its_address_in_later_epochs(self) -> None:
        state = await self.connect(
            limits(max_streams_per_address=1, max_streams_per_device=1), lease_ttl=1, key_rotation=1
        )
        held = await self.admit(state, ask(1), device(1))
        assert isinstance(held, Lease)
        await deferLater(reactor, 2.5, lambda: None)  # two epochs later: moved by renewal
        with self.assertRaises(RequestRejected) as caught:
            await state.screen(ask(2))
        self.assertEqual(caught.exception.retry_after, 1)
        self.assertEqual(await self.admit(state, ask(3, address="192.0.2.9"), device(1)), OVERLOADED)
        state.release(held)
        await deferLater(reactor, 0.1, lambda: None)
        self.assertIsInstance(await self.admit(state, ask(4), device(1)), Lease)
        self.assertNotIn(held.token.hex().encode(), self.server.dump())

    async def test_three_script_calls_per_chat(self) -> None:
        a = await self.connect()
        self.server.command("CONFIG", "RESETSTAT")
        held = await self.admit(a, ask(1), device(1))
        assert isinstance(held, Lease)
        a.release(held)
        await deferLater(reactor, 0.1, lambda: None)
        stats = self.server.command("INFO", "commandstats")
        assert isinstance(stats, bytes)
        calls = {
            line.split(b":")[0].removeprefix(b"cmdstat_"): int(line.split(b"calls=")[1].split(b",")[0])
            for line in stats.splitlines()
            if line.startswith(b"cmdstat_")
        }
        scripts = calls.pop(b"eval", 0) + calls.pop(b"evalsha", 0)
        calls.pop(b"config|resetstat", None)
        self.assertEqual(scripts, 3)
        self.assertLessEqual(sum(calls.values()), 80)  # 72 measured: mostly purges and counts

    async def test_redis_stopped_fails_fast_then_recovers_with_a_floor(self) -> None:
        a = await self.connect()
        seen, pending = ask(1), ask(2, address="192.0.2.2")
        await self.admit(a, seen, device(1))
        await a.screen(pending)  # screened before the restart, committed after it
        self.server.kill()
        for request in (ask(2), seen):
            started = time.monotonic()
            with self.assertRaises(StateUnavailable):
                await a.screen(request)
            self.assertLess(time.monotonic() - started, 0.5 + 0.3)
        with self.assertRaises(StateUnavailable):
            await a.commit(ask(3), device(1))
        self.server.start()  # fresh: it has forgotten the window
        deadline = time.monotonic() + 5
        while True:
            try:
                await a.screen(ask(4, timestamp=int(time.time()) + 10))
                break
            except StateUnavailable:
                self.assertLess(time.monotonic(), deadline, "no reconnect within 5 s")
                await deferLater(reactor, 0.1, lambda: None)
        with self.assertRaises(RequestRejected) as caught:
            await a.screen(
                Ask(
                    seen.address,
                    time.time(),
                    request_id=seen.request_id,
                    encapsulated_key=seen.encapsulated_key,
                    timestamp=seen.timestamp,
                )
            )
        self.assertEqual(caught.exception.rejection.status, 401)
        with self.assertRaises(RequestRejected) as caught:
            await a.commit(pending, device(2))
        self.assertEqual(caught.exception.rejection.status, 401)

    async def test_redis_paused_past_the_deadline_then_resumed(self) -> None:
        a = await self.connect(pool_size=1)
        await a.screen(ask(1))
        self.server.pause()
        self.addCleanup(self.server.resume)
        # The first times out on its connection, which is closed; the next find it reconnecting,
        # its AUTH unanswered (which must not stop txredisapi from reconnecting for good).
        for _ in range(4):
            started = time.monotonic()
            with self.assertRaises(StateUnavailable):
                await a.screen(ask(2))
            self.assertLess(time.monotonic() - started, 0.5 + 0.3)
            await deferLater(reactor, 0.5, lambda: None)
        self.server.resume()
        deadline = time.monotonic() + 5
        while True:
            try:
                await a.screen(ask(3))
                return
            except StateUnavailable:
                self.assertLess(time.monotonic(), deadline, "no recovery within 5 s")
                await deferLater(reactor, 0.1, lambda: None)

    async def test_unsafe_redis_is_refused_at_start(self) -> None:
        for name, value in (("save", "3600 1"), ("appendonly", "yes"), ("maxmemory-policy", "allkeys-lru")):
            self.server.command("CONFIG", "SET", name, value)
            with self.assertRaises(RedisStateError) as caught:
                await connect(self.config(), LIMITS, self.directory, reactor)
            self.assertIn(name, str(caught.exception))
            state = await self.connect(allow_unsafe_redis=True)
            await state.screen(ask(1))
            self.server.command("CONFIG", "SET", name, {"save": "", "appendonly": "no"}.get(name, "noeviction"))

    async def test_routers_with_different_state_keys_are_refused(self) -> None:
        await self.connect()
        other = os.path.join(self.directory, "other.key")
        write_secret(other, os.urandom(32))
        with self.assertRaises(RedisStateError) as caught:
            await connect(self.config(key_file=other), LIMITS, self.directory, reactor)
        self.assertIn("different state keys", str(caught.exception))
        self.assertIsInstance(await self.connect(), RedisState)  # the same key still starts

    async def test_a_wrong_password_is_refused_at_start(self) -> None:
        write_secret(self.password_file, b"wrong\n")
        with self.assertRaises(RedisStateError):
            await connect(self.config(), LIMITS, self.directory, reactor)

    async def test_plain_redis_urls_are_refused(self) -> None:
        for url in ("redis://127.0.0.1:6379", "rediss://127.0.0.1", "unix://host/path", "http://x"):
            with self.assertRaises(RedisStateError):
                await connect(self.config(url=url), LIMITS, self.directory, reactor)


class RedisTLS(RedisTestCase):
    def setUp(self) -> None:
        if not available():
            self.skipTest("redis-server is not installed")
        self.directory = tempfile.mkdtemp(prefix="privllm-state-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        ca_dir = os.path.join(self.directory, "ca")
        self.ca = pki.create_ca(ca_dir)
        certificate, key = pki.issue(ca_dir, "redis.test", self.directory, dns=["localhost"], ips=["127.0.0.1"])
        self.server = RedisServer(PASSWORD, tls=(certificate, key, self.ca))
        self.addCleanup(self.server.close)
        self.server.command("SET", "privllm:fresh", "1")
        self.password_file = os.path.join(self.directory, "redis.password")
        write_secret(self.password_file, PASSWORD.encode())

    async def test_a_round_trip_over_tls_with_an_acl_user(self) -> None:
        state = await self.connect(url=f"rediss://localhost:{self.server.tls_port}", ca=self.ca)
        request = ask(1)
        await state.screen(request)
        self.assertIsInstance(await state.commit(request, device(1)), Lease)
        with self.assertRaises(RequestRejected):
            await state.screen(request)

    async def test_an_untrusted_certificate_is_refused(self) -> None:
        other = pki.create_ca(os.path.join(self.directory, "other"))
        with self.assertRaises(RedisStateError):
            await connect(
                self.config(url=f"rediss://localhost:{self.server.tls_port}", ca=other), LIMITS, self.directory, reactor
            )


class RedisAgainstItsReviewers(RedisTestCase):
    """Ways around the shared state found in review, each refused (each passed before its fix)."""

    async def admit(self, state: RedisState, request: Ask, dev: bytes) -> Lease | SealedRefusal:
        await state.screen(request)
        result: Lease | SealedRefusal = await state.commit(request, dev)
        return result

    async def until_answered(self, call: Any) -> Any:
        """Retry while the state reconnects after a restart (bounded)."""
        deadline = time.monotonic() + 5
        while True:
            try:
                return await call()
            except StateUnavailable:
                self.assertLess(time.monotonic(), deadline, "no reconnect within 5 s")
                await deferLater(reactor, 0.2, lambda: None)

    async def test_leases_outlive_a_redis_restart(self) -> None:
        """A restarted Redis forgot the streams under way; the worker's renewal puts them back."""
        a = await self.connect(limits(max_streams=1), lease_ttl=6)
        self.assertIsInstance(await self.admit(a, ask(1), device(1)), Lease)
        self.server.kill()
        self.server.start()
        self.server.command("SET", "privllm:fresh", "1")  # no floor: the point here is the streams
        await deferLater(reactor, 2.5, lambda: None)  # one renewal (every lease_ttl / 3)
        with self.assertRaises(RequestRejected) as caught:
            await self.until_answered(lambda: a.screen(ask(2, address="192.0.2.2")))
        self.assertEqual(caught.exception.rejection.status, 503)  # the cap still counts the first

    async def test_expiries_follow_the_routers_clock_not_redis(self) -> None:
        """The router's clock 200 s behind Redis's: nothing it writes expires early."""
        a = await self.connect(limits(address_burst=1, max_streams_per_address=1, max_streams_per_device=1))
        now = time.time() - 200
        await a.screen(ask(1, now=now))
        with self.assertRaises(RequestRejected) as caught:
            await a.screen(ask(2, now=now))
        self.assertEqual(caught.exception.rejection.status, 429)  # the address's rate limit held
        token = os.urandom(16)
        b = await self.connect()
        await b.screen(ask(3, address="192.0.2.3", now=now, pow_token=token, pow_expires=int(now) + 60))
        with self.assertRaises(PowSpent):
            await b.screen(ask(4, address="192.0.2.3", now=now, pow_token=token, pow_expires=int(now) + 60))
        c = await self.connect(limits(max_streams_per_address=1))
        first = ask(5, address="192.0.2.5", now=now)
        self.assertIsInstance(await self.admit(c, first, device(5)), Lease)
        with self.assertRaises(RequestRejected) as caught:
            await c.screen(ask(6, address="192.0.2.5", now=now))
        self.assertEqual(caught.exception.rejection.status, 429)  # its stream is still counted

    async def test_a_router_whose_clock_is_ahead_across_a_boundary(self) -> None:
        a = await self.connect(key_rotation=1)
        b = await self.connect(key_rotation=1)
        boundary = int(time.time()) + 1
        request = ask(1, now=boundary + 0.1, timestamp=boundary)
        self.assertIsInstance(await self.admit(a, request, device(1)), Lease)
        behind = Ask(
            request.address,
            boundary - 0.1,
            request_id=request.request_id,
            encapsulated_key=request.encapsulated_key,
            timestamp=boundary,
        )
        with self.assertRaises(RequestRejected) as caught:
            await b.screen(behind)
        self.assertEqual(caught.exception.rejection.status, 409)

    async def test_another_state_key_after_a_redis_restart(self) -> None:
        """A restarted Redis forgot the start-up key check; a router started then with another
        key must not work beside the running ones: whichever reached Redis first is served,
        the others are refused (503), never mixed."""
        a = await self.connect()
        self.server.kill()
        self.server.start()
        self.server.command("SET", "privllm:fresh", "1")
        other = os.path.join(self.directory, "other.key")
        write_secret(other, os.urandom(32))
        late = await connect(self.config(key_file=other), LIMITS, self.directory, reactor)
        self.addCleanup(late.stop)
        await late.screen(ask(1))
        with self.assertRaises(RequestRejected) as caught:
            await self.until_answered(lambda: a.screen(ask(2)))
        self.assertEqual(caught.exception.rejection.status, 503)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        with self.assertRaises(RedisStateError):  # and a third with the first key cannot start
            await connect(self.config(), LIMITS, self.directory, reactor)

    async def test_without_info_no_marker_and_no_service(self) -> None:
        """The floor needs Redis's uptime: an ACL without INFO must not leave a marker without
        a floor (pre-restart requests would pass); every chat is refused instead."""
        a = await self.connect()
        self.server.kill()
        self.server.start()
        self.server.command("ACL", "SETUSER", USER, "-info")
        for _ in range(3):
            with self.assertRaises(StateUnavailable):
                await self.until_no_connection_error(lambda: a.screen(ask(1, timestamp=int(time.time()) - 20)))
        self.assertEqual(self.server.command("EXISTS", "privllm:fresh"), 0)

    async def until_no_connection_error(self, call: Any) -> Any:
        """Call until Redis answers (after a restart), letting its refusal through."""
        deadline = time.monotonic() + 5
        while True:
            try:
                return await call()
            except StateUnavailable as e:
                if "Connection" not in str(e) and "connect" not in str(e).lower() and "Timeout" not in str(e):
                    raise
                self.assertLess(time.monotonic(), deadline, "no reconnect within 5 s")
                await deferLater(reactor, 0.2, lambda: None)
