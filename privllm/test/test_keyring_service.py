"""The key ring over simulated days: schedule, client validity, expiry, restarts, shared directories."""

from __future__ import annotations

import fcntl
import gc
import json
import os
import time
import weakref
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from ..keys import store as store_module
from ..keys.files import KeyFileError, write_secret
from ..keys.material import KEYRING
from ..keys.service import KeyRingService
from ..keys.store import LOCK, KeyRingStore, Update
from ..protocol import suite
from ..protocol.errors import UNKNOWN_KEY, RequestRejected
from ..protocol.keyring import KeyRing
from ..protocol.keyset import KEYSET_CLOCK_SKEW, StaleKeySet, choose_key, verify_keyset
from ..protocol.v2.keys import verify_key_configs
from .helpers import NOW, memory_gate, sealed_request, settled

DAY = 86400
HOUR = 3600
LIFETIME = 3600


class Service(TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(NOW)
        self.identity = Ed25519PrivateKey.generate()
        self.pin = self.identity.public_key().public_bytes_raw()

    def service(self, clock: Clock | None = None) -> KeyRingService:
        s = KeyRingService(
            KeyRingStore(self.dir, DAY, HOUR), self.identity, clock or self.clock, LIFETIME, maybeDeferred
        )
        s.startService()
        self.addCleanup(s.stopService)
        return s

    def published(self, s: KeyRingService) -> list:
        return verify_keyset(s.keyset(), self.pin, int(self.clock.seconds())).keys

    def test_rotates_on_schedule(self) -> None:
        s = self.service()
        first = self.published(s)[0]
        self.clock.advance(DAY - 60)
        self.assertEqual(self.published(s)[0].key_id, first.key_id)
        self.clock.advance(60)
        now_current = self.published(s)[0]
        self.assertEqual(now_current.status, "current")
        self.assertEqual(now_current.not_before, first.not_before + DAY)
        for day in range(2, 8):
            self.clock.pump([HOUR] * 24)
            self.assertEqual(self.published(s)[0].not_before, first.not_before + day * DAY)

    def test_a_set_fetched_up_to_one_interval_earlier_still_works(self) -> None:
        s = self.service()
        admission = memory_gate(
            s.ring,
            address_rate=1e6,
            address_burst=10**6,
            replay_max_entries=100_000,
            max_streams=10**6,
            max_streams_per_address=10**6,
        )
        fetched: list[tuple[int, list]] = []
        for _ in range(6 * 24):  # the router's clock moves on hour by hour for six days
            now = int(self.clock.seconds())
            fetched.append((now, self.published(s)))
            fetched = [(t, keys) for t, keys in fetched if now - t <= DAY]
            for t, keys in fetched:  # every client that fetched within the last interval
                key = s.ring.accepting(choose_key(keys, now).key_id, now)
                self.assertIsNotNone(key, (t, now))
                assert key is not None
                body = sealed_request(key, timestamp=now).body
                settled(admission.admit(json.dumps(body).encode(), "a", now, True))
            self.clock.advance(HOUR)

    def test_expired_key_refused_unknown_key(self) -> None:
        s = self.service()
        admission = memory_gate(s.ring, address_rate=1000, address_burst=1000)
        old = self.published(s)[0]
        ring_key = s.ring.accepting(old.key_id, NOW)
        assert ring_key is not None
        self.clock.pump([60] * ((old.not_after - NOW) // 60 + 1))
        body = sealed_request(ring_key, timestamp=int(self.clock.seconds())).body
        with self.assertRaises(RequestRejected) as cm:
            settled(admission.admit(json.dumps(body).encode(), "a", self.clock.seconds(), True))
        self.assertEqual(cm.exception.rejection, UNKNOWN_KEY)
        self.assertFalse(hasattr(ring_key, "secret"), "a key that left the ring is dropped")

    def test_restart_keeps_keys(self) -> None:
        first = self.published(self.service())
        self.clock.advance(HOUR)
        self.assertEqual(self.published(self.service()), first)

    def test_processes_sharing_a_directory_agree(self) -> None:
        a, b = self.service(), self.service()
        for _ in range(3):
            self.clock.pump([HOUR] * 24)
            self.assertEqual(self.published(a), self.published(b))

    def test_rotation_on_demand_is_adopted(self) -> None:
        s = self.service()
        before = self.published(s)[0]
        store = KeyRingStore(self.dir, DAY, HOUR)
        store.update(NOW + 10, lambda r: r.rotate_now(NOW + 10, suite.new_private_key))
        self.clock.advance(60)
        after = self.published(s)[0]
        self.assertNotEqual(after.key_id, before.key_id)
        self.assertIsNotNone(s.ring.accepting(before.key_id, NOW + 60), "the old key stays accepted")
        store.update(NOW + 70, lambda r: r.rotate_now(NOW + 70, suite.new_private_key, revoke=True))
        self.clock.advance(60)
        self.assertIsNone(s.ring.accepting(before.key_id, NOW + 130), "revoked")
        live = [k.key_id for k in s.ring.keys]
        self.assertEqual(len(live), len(set(live)))
        self.assertNotIn(before.key_id, live)

    def test_served_sets_stay_fresh(self) -> None:
        """Re-signed once a minute: whenever it is fetched, a set has nearly its whole lifetime left."""
        s = self.service()
        for _ in range(3 * 24 * 4):  # three days, every quarter of an hour
            now = int(self.clock.seconds())
            keyset = verify_keyset(s.keyset(), self.pin, now)
            self.assertGreaterEqual(keyset.expires - now, LIFETIME - s.RESIGN_EVERY)
            self.assertLessEqual(now - keyset.issued_at, s.RESIGN_EVERY)
            self.clock.advance(15 * 60)

    def test_ohttp_keys_resigned_each_minute_and_at_a_ring_change(self) -> None:
        """Protocol v2's configurations follow the ring as v1's set does: the published keys,
        re-signed once a minute, at once after a rotation; the gateway keys follow too."""
        s = self.service()

        def served() -> tuple[int, ...]:
            signed = s.ohttp_keys()
            configs = verify_key_configs(
                signed.body, dict(signed.headers()), self.pin, int(self.clock.seconds())
            ).configs
            self.assertLessEqual(int(self.clock.seconds()) - signed.issued, s.RESIGN_EVERY)
            self.assertEqual(signed.expires - signed.issued, LIFETIME)
            return tuple(c.key_id for c in configs)

        before = served()
        self.assertEqual(before, tuple(k.key_id for k in s.ring.published(NOW)))
        first = s.ohttp_keys()
        self.clock.advance(s.RESIGN_EVERY - 1)
        self.assertIs(s.ohttp_keys(), first)
        self.clock.advance(1)
        self.assertGreater(s.ohttp_keys().issued, first.issued)
        old = s.gateway_keys.accepting(before[0], NOW + 60)[before[0]]
        store = KeyRingStore(self.dir, DAY, HOUR)
        store.update(NOW + 70, lambda r: r.rotate_now(NOW + 70, suite.new_private_key, revoke=True))
        held = weakref.ref(old)
        del old
        self.clock.advance(s.CHECK_EVERY)
        gc.collect()
        self.assertIsNone(held(), "the revoked key's gateway key (and its private key) is let go at once")
        after = served()
        self.assertNotIn(before[0], after)
        now = int(self.clock.seconds())
        self.assertEqual(s.gateway_keys.accepting(before[0], now), {}, "revoked: no gateway key")
        fresh = s.gateway_keys.accepting(after[0], now)[after[0]]
        ring_key = s.ring.accepting(after[0], now)
        assert ring_key is not None
        self.assertIs(fresh.private_key, ring_key.secret, "the ring's own key object")

    def test_revocation_protects_clients_within_the_lifetime(self) -> None:
        """A set signed before `rotate --revoke`, replayed by whoever holds the revoked key,
        stops verifying at its issued_at + lifetime + clock skew."""
        s = self.service()
        captured = s.keyset()
        revoked = verify_keyset(captured, self.pin, NOW).keys[0].key_id
        store = KeyRingStore(self.dir, DAY, HOUR)
        store.update(NOW + 10, lambda r: r.rotate_now(NOW + 10, suite.new_private_key, revoke=True))
        self.clock.advance(s.CHECK_EVERY)
        served = verify_keyset(s.keyset(), self.pin, int(self.clock.seconds()))
        self.assertNotIn(revoked, [k.key_id for k in served.keys], "served at once after adoption")
        bound = NOW + LIFETIME + KEYSET_CLOCK_SKEW
        self.assertEqual(verify_keyset(captured, self.pin, bound - 1).keys[0].key_id, revoked)
        self.assertRaises(StaleKeySet, verify_keyset, captured, self.pin, bound)

    def test_corrupt_file_stops_start_and_is_not_overwritten(self) -> None:
        self.service()
        path = os.path.join(self.dir, KEYRING)
        write_secret(path, b"not json")
        self.assertRaises(
            KeyFileError, KeyRingService, KeyRingStore(self.dir, DAY, HOUR), self.identity, self.clock, LIFETIME
        )
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"not json")

    def test_corrupt_file_while_running_keeps_serving(self) -> None:
        s = self.service()
        before = self.published(s)
        write_secret(os.path.join(self.dir, KEYRING), b"not json")
        self.clock.advance(60)
        self.assertEqual(self.published(s), before)
        self.flushLoggedErrors()


class Hygiene(TestCase):
    """One private key object per ring key, built once; nothing read from the file left unwiped."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = KeyRingStore(self.dir, DAY, HOUR)
        self.buffers: list[bytearray] = []
        self.parsed = 0
        read, parse = store_module.read_secret_buffer, store_module.parse_keyring

        def reading(*args: object) -> bytearray:
            self.buffers.append(read(*args))  # type: ignore[arg-type]
            return self.buffers[-1]

        def parsing(*args: object) -> object:
            self.parsed += 1
            return parse(*args)  # type: ignore[arg-type]

        self.patch(store_module, "read_secret_buffer", reading)
        self.patch(store_module, "parse_keyring", parsing)

    def test_checks_reuse_the_key_objects_and_wipe_what_they_read(self) -> None:
        s = KeyRingService(self.store, Ed25519PrivateKey.generate(), self.clock, LIFETIME, maybeDeferred)
        s.startService()
        self.addCleanup(s.stopService)
        secrets = [k.secret for k in s.ring.keys]
        self.clock.pump([60] * 30)
        self.assertEqual([k.secret for k in s.ring.keys], secrets)
        self.assertTrue(all(a is b for a, b in zip([k.secret for k in s.ring.keys], secrets, strict=True)))
        self.assertEqual(self.parsed, 0, "an unchanged file is not parsed again")
        self.assertGreaterEqual(len(self.buffers), 30)
        self.assertTrue(all(not any(b) for b in self.buffers), "every buffer read is overwritten")

    def test_a_changed_file_keeps_held_keys_and_drops_their_copies(self) -> None:
        ring = self.store.update(NOW)
        held = {k.key_id: k for k in ring.keys}
        other = KeyRingStore(self.dir, DAY, HOUR)
        other.update(NOW + 10, lambda r: r.rotate_now(NOW + 10, suite.new_private_key))
        copies = other.update(NOW + 10).keys
        loaded: list = []
        adopt = ring.adopt

        def adopting(theirs: KeyRing) -> None:
            loaded.extend(theirs.keys)
            adopt(theirs)

        self.patch(ring, "adopt", adopting)
        parsed = self.parsed
        self.store.update(NOW + 20)
        self.assertEqual(self.parsed, parsed + 1)
        for key in ring.keys:
            if key.key_id in held:
                self.assertIs(key, held[key.key_id])
        self.assertEqual(
            {k.key_id for k in ring.keys}, {k.key_id for k in copies}, "the rotation is adopted from the file"
        )
        dropped = [k for k in loaded if not any(k is mine for mine in ring.keys)]
        self.assertTrue(dropped, "the file's copies of held keys were loaded")
        self.assertFalse(any(hasattr(k, "secret") for k in dropped), "and dropped")
        self.assertTrue(all(not any(b) for b in self.buffers))

    def test_revoked_keys_leave_the_ring(self) -> None:
        ring = self.store.update(NOW)
        before = ring.keys
        KeyRingStore(self.dir, DAY, HOUR).update(
            NOW + 10, lambda r: r.rotate_now(NOW + 10, suite.new_private_key, revoke=True)
        )
        self.store.update(NOW + 20)
        self.assertFalse(any(hasattr(k, "secret") for k in before))
        self.assertFalse(any(k in ring.keys for k in before))


class Held:
    """An `in_thread` stand-in: keeps each call for the test to do the thread's work and then
    hand the result to the reactor, each when it chooses."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((f, args, d))
        return d

    def work(self) -> tuple[Update, Deferred[Any]]:
        f, args, d = self.calls[-1]
        return f(*args), d


class OffTheReactor(TestCase):
    """The file work of a check (a lock shared with other processes, maybe an fsync) runs in a
    thread; the ring admission reads changes only on the reactor thread, in one step."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(NOW)
        self.held = Held()
        self.s = KeyRingService(
            KeyRingStore(self.dir, DAY, HOUR), Ed25519PrivateKey.generate(), self.clock, LIFETIME, self.held
        )
        self.s.startService()
        self.before = self.s.ring.keys

    def stop(self) -> None:
        """Stop, and let a check still under way fail so the stop completes."""
        self.s.stopService()
        for _, _, d in self.held.calls:
            if not d.called:
                d.errback(Failure(OSError("stopped")))

    def served(self) -> list[int]:
        return [k.key_id for k in self.s.ring.published(int(self.clock.seconds()))]

    def revoke_elsewhere(self) -> None:
        """`privllm-admin rotate --revoke` from another process: every key held now leaves."""
        KeyRingStore(self.dir, DAY, HOUR).update(
            NOW + 10, lambda r: r.rotate_now(NOW + 10, suite.new_private_key, revoke=True)
        )

    def test_the_ring_changes_only_when_the_result_reaches_the_reactor(self) -> None:
        self.addCleanup(self.stop)
        served = self.served()
        self.revoke_elsewhere()
        self.clock.advance(60)
        update, d = self.held.work()  # the thread read, refreshed and saved: nothing served changed
        self.assertEqual(self.s.ring.keys, self.before)
        self.assertTrue(all(hasattr(k, "secret") for k in self.before))
        self.assertEqual(self.served(), served)
        self.clock.advance(10 * 60)
        self.assertEqual(len(self.held.calls), 1, "no check starts while one runs")
        d.callback(update)
        self.assertTrue(self.s.ring.keys)
        self.assertFalse(set(self.s.ring.keys) & set(self.before), "the revocation is adopted")
        self.assertFalse(any(hasattr(k, "secret") for k in self.before), "and the revoked keys dropped")
        self.assertEqual(update.ring.keys, [], "the copy is used up")
        self.assertNotEqual(self.served(), served)
        self.clock.advance(60)
        self.assertEqual(len(self.held.calls), 2, "the checks go on")

    def test_a_failed_check_keeps_serving_and_checking(self) -> None:
        self.addCleanup(self.stop)
        self.clock.advance(60)
        self.held.calls[-1][2].errback(Failure(KeyFileError("unreadable")))
        self.assertEqual(self.s.ring.keys, self.before)
        self.assertTrue(all(hasattr(k, "secret") for k in self.before))
        self.clock.advance(60)
        self.assertEqual(len(self.held.calls), 2)

    def test_an_unexpected_error_stops_the_checks_and_keeps_serving(self) -> None:
        self.addCleanup(self.stop)
        self.clock.advance(60)
        self.held.calls[-1][2].errback(Failure(RuntimeError("a bug")))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.s.ring.keys, self.before)
        self.clock.advance(10 * 60)
        self.assertEqual(len(self.held.calls), 1)

    def test_stop_waits_for_a_check_then_wipes_both_rings(self) -> None:
        self.revoke_elsewhere()
        self.clock.advance(60)
        update, d = self.held.work()
        made = update.ring.keys
        stopped: list[None] = []
        stopping = self.s.stopService()
        assert stopping is not None
        stopping.addCallback(stopped.append)
        self.assertEqual(stopped, [])
        self.assertTrue(all(hasattr(k, "secret") for k in self.before), "still serving what is under way")
        d.callback(update)
        self.assertEqual(stopped, [None])
        self.assertEqual(self.s.ring.keys, [])
        self.assertEqual(update.ring.keys, [])
        self.assertFalse(any(hasattr(k, "secret") for k in self.before + made), "no key left in memory")
        self.clock.advance(10 * 60)
        self.assertEqual(len(self.held.calls), 1)

    def test_stop_after_a_failed_check_still_wipes(self) -> None:
        self.clock.advance(60)
        stopping = self.s.stopService()
        assert stopping is not None
        self.held.calls[-1][2].errback(Failure(OSError("disk gone")))
        self.assertIsNone(self.successResultOf(stopping))
        self.assertFalse(any(hasattr(k, "secret") for k in self.before))


class LockHeldElsewhere(TestCase):
    """With the real thread pool: while another process holds the ring's lock, the reactor
    thread goes on at once, and the ring follows the file once the lock is released."""

    async def test_a_held_lock_does_not_block_the_reactor(self) -> None:
        state = os.path.abspath(self.mktemp())
        clock = Clock()
        clock.advance(NOW)
        running: list[Deferred[Any]] = []

        def in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            running.append(deferToThread(f, *args))
            return running[-1]

        s = KeyRingService(KeyRingStore(state, DAY, HOUR), Ed25519PrivateKey.generate(), clock, LIFETIME, in_thread)
        s.startService()
        before = s.ring.keys
        KeyRingStore(state, DAY, HOUR).update(NOW + 10, lambda r: r.rotate_now(NOW + 10, suite.new_private_key))
        lock = os.open(os.path.join(state, LOCK), os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a separate open file: blocks this process's store too
            started = time.monotonic()
            clock.advance(60)
            self.assertLess(time.monotonic() - started, 0.5, "the check returned at once")
            await deferLater(reactor, 0.5, lambda: None)  # the reactor runs meanwhile
            self.assertEqual(len(running), 1)
            self.assertFalse(running[0].called, "the thread waits for the lock")
            self.assertEqual(s.ring.keys, before)
        finally:
            os.close(lock)
        done: Deferred[None] = Deferred()

        def finished(result: object) -> object:
            done.callback(None)
            return result

        running[0].addBoth(finished)
        await done
        self.assertNotEqual(s.ring.keys, before, "the rotation is adopted once the lock is free")
        current, following = before  # the rotation keeps the current key and drops the unstarted one
        self.assertIn(current, s.ring.keys)
        self.assertTrue(hasattr(current, "secret"))
        self.assertFalse(hasattr(following, "secret"))
        await maybeDeferred(s.stopService)
        self.assertFalse(any(hasattr(k, "secret") for k in before))

    def test_a_lock_held_for_ever_fails_the_check_in_bounded_time(self) -> None:
        """A hung or stopped process holding the lock: the check fails with one line (logged
        and retried a minute later by the service) instead of waiting silently."""
        state = os.path.abspath(self.mktemp())
        store = KeyRingStore(state, DAY, HOUR)
        store.update(NOW)
        store.lock_wait = 0.3
        lock = os.open(os.path.join(state, LOCK), os.O_RDWR)
        self.addCleanup(os.close, lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        with self.assertRaises(KeyFileError) as caught:
            store.prepare(lambda: NOW + 60)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIn("held by another process", str(caught.exception))

    def test_the_time_is_read_once_the_lock_is_held(self) -> None:
        """The wait for the lock can last 30 s: a time read before it would refresh the ring
        as of then."""
        state = os.path.abspath(self.mktemp())
        store = KeyRingStore(state, DAY, HOUR)
        store.update(NOW)
        read: list[bool] = []

        def clock() -> int:
            other = os.open(os.path.join(state, LOCK), os.O_RDWR)
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                read.append(False)
            except BlockingIOError:
                read.append(True)
            finally:
                os.close(other)
            return NOW + 60

        store.prepare(clock).discard()
        self.assertEqual(read, [True], "read once, under the lock")

    def test_stopping_twice_during_a_check_answers_both(self) -> None:
        clock = Clock()
        clock.advance(NOW)
        held: list[Deferred[Any]] = []

        def in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            held.append(Deferred())
            return held[-1]

        state = os.path.abspath(self.mktemp())
        s = KeyRingService(KeyRingStore(state, DAY, HOUR), Ed25519PrivateKey.generate(), clock, LIFETIME, in_thread)
        s.startService()
        clock.advance(60)
        first, second = s.stopService(), s.stopService()
        assert first is not None and second is not None
        held[0].errback(Failure(OSError("slow disk")))
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
