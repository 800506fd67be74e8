"""The chat's state machine alone: its table, its one way out, and random event sequences."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ..protocol import life
from ..protocol.life import ACCEPTS, LIVE, ChatLife, Finished, LifeError, State, Timeouts, Verdict
from . import properties

properties.load()

TIMEOUTS = Timeouts(first_token=60, idle=120, request=600)


def new_life(retries: int = 2) -> ChatLife:
    return ChatLife(0.0, retries, lambda n: 0.1 * (n + 1), TIMEOUTS)


# Each event with arguments that suit it; the machine decides what they mean.
EVENTS: dict[str, Any] = {
    "refused": lambda m, now: m.refused("rate_limited", "slow down", 3),
    "too_long": lambda m, now: m.too_long(),
    "sent": lambda m, now: m.sent(now),
    "taken": lambda m, now: m.taken(now),
    "queued": lambda m, now: m.queued(),
    "no_node": lambda m, now: m.no_node(),
    "queue_full": lambda m, now: m.queue_full(),
    "slot_free": lambda m, now: m.slot_free(),
    "queue_timed_out": lambda m, now: m.queue_timed_out(),
    "delta": lambda m, now: m.delta("x", now),
    "finished": lambda m, now: m.finished(Finished("stop", 1, 1)),
    "request_error": lambda m, now: m.request_error("too_long"),
    "node_failed": lambda m, now: m.node_failed(life.Fault.SERVER),
    "retry_due": lambda m, now: m.retry_due(),
    "tick": lambda m, now: m.tick(now),
    "client_gone": lambda m, now: m.client_gone(),
    "crash": lambda m, now: m.crash(),
}


def final(actions: list[life.Action]) -> dict[str, Any]:
    """The chunk of the one Final among `actions`."""
    (chunk,) = [a.chunk for a in actions if isinstance(a, life.Final)]
    return chunk


def drive(machine: ChatLife, path: list[str]) -> None:
    for event in path:
        EVENTS[event](machine, 1.0)


PATHS = {
    State.STARTING: [],
    State.QUEUED: ["queued"],
    State.CHECKING: ["taken"],
    State.ATTEMPTING: ["taken", "sent"],
    State.RETRYING: ["taken", "sent", "node_failed"],
    State.STREAMING: ["taken", "sent", "delta"],
    State.DONE: ["taken", "sent", "finished"],
    State.FAILED: ["no_node"],
}


class Table(TestCase):
    def test_every_event_in_every_state(self) -> None:
        """In a live state an event either has a transition or is a LifeError; ended, it is ignored."""
        self.assertEqual(set(ACCEPTS), set(EVENTS))
        for state, path in PATHS.items():
            for event, fire in EVENTS.items():
                machine = new_life()
                drive(machine, path)
                self.assertIs(machine.state, state)
                if state not in LIVE:
                    self.assertEqual(fire(machine, 2.0), [], (state, event))
                elif state in ACCEPTS[event]:
                    fire(machine, 2.0)
                else:
                    self.assertRaises(LifeError, fire, machine, 2.0)

    def test_retries_before_the_first_delta_only(self) -> None:
        machine = new_life(retries=1)
        machine.taken(1.0)
        machine.sent(1.0)
        actions = machine.node_failed(life.Fault.DOWN)
        self.assertEqual(actions, [life.ReleaseNode(Verdict.DOWN), life.ScheduleRetry(0.1)])
        self.assertEqual(machine.retry_due(), [life.Attempt()])
        machine.taken(2.0)
        machine.sent(2.0)
        actions = machine.node_failed(life.Fault.SERVER)
        self.assertEqual(actions[0], life.ReleaseNode(Verdict.FAILED))
        self.assertEqual(final(actions)["code"], "upstream_failed")
        self.assertEqual(actions[-1], life.End("upstream_failed"))

    def test_no_retry_once_streaming(self) -> None:
        machine = new_life(retries=5)
        machine.taken(1.0)
        machine.sent(1.0)
        self.assertEqual(machine.delta("a", 1.0), [life.ForgetConversation(), life.SendDelta("a")])
        actions = machine.node_failed(life.Fault.SERVER)
        self.assertEqual([type(a) for a in actions], [life.ReleaseNode, life.Final, life.End])

    def test_request_errors_are_not_the_nodes_fault(self) -> None:
        machine = new_life()
        machine.taken(1.0)
        machine.sent(1.0)
        actions = machine.request_error("too_long")
        self.assertEqual(actions[0], life.ReleaseNode(Verdict.OK))
        self.assertEqual(final(actions)["code"], "too_long")

    def test_the_routers_own_count_has_no_verdict_on_the_node(self) -> None:
        machine = new_life()
        machine.taken(1.0)
        self.assertEqual(machine.too_long()[0], life.ReleaseNode(Verdict.NONE))

    def test_first_token_timeout_is_silence(self) -> None:
        """Harmony reasons before its first delta: tokens that are not deltas keep it alive."""
        machine = new_life()
        machine.taken(0.0)
        machine.sent(0.0)
        machine.upstream_activity(50.0)
        self.assertEqual(machine.tick(109.0), [])
        self.assertEqual(final(machine.tick(110.0))["message"], life.MESSAGES["first_token_timeout"])

    def test_timeouts(self) -> None:
        machine = new_life()
        machine.taken(0.0)
        machine.sent(0.0)
        self.assertEqual(machine.tick(59.0), [])
        actions = machine.tick(60.0)
        self.assertEqual(actions[0], life.ReleaseNode(Verdict.FAILED))
        self.assertEqual(final(actions)["message"], life.MESSAGES["first_token_timeout"])
        machine = new_life()
        machine.taken(0.0)
        machine.sent(0.0)
        machine.delta("a", 10.0)
        self.assertEqual(machine.tick(129.0), [])
        machine.upstream_activity(129.0)
        self.assertEqual(machine.tick(248.0), [])
        self.assertEqual(final(machine.tick(249.0))["message"], life.MESSAGES["idle_timeout"])

    def test_the_request_budget_runs_while_queued(self) -> None:
        machine = new_life()
        machine.queued()
        self.assertEqual(machine.tick(599.0), [])
        actions = machine.tick(600.0)
        self.assertEqual([type(a) for a in actions], [life.Final, life.End], "no node is held while queued")

    def test_client_gone_sends_nothing(self) -> None:
        machine = new_life()
        machine.taken(0.0)
        machine.sent(0.0)
        self.assertEqual(machine.client_gone(), [life.ReleaseNode(Verdict.NONE), life.End("client_gone")])

    def test_refusal_carries_its_retry_time(self) -> None:
        actions = new_life().refused("rate_limited", "slow down", 7)
        self.assertEqual(
            final(actions), {"type": "error", "code": "rate_limited", "message": "slow down", "retry_after": 7}
        )

    def test_codes_are_documented(self) -> None:
        """Every sealed error any transition sends has a code from docs/protocol.md's table."""
        seen = set()
        for state, path in PATHS.items():
            for event, fire in EVENTS.items():
                machine = new_life()
                drive(machine, path)
                if state in LIVE and state in ACCEPTS[event]:
                    for action in fire(machine, 1000.0):
                        if isinstance(action, life.Final) and action.chunk["type"] == "error":
                            seen.add(action.chunk["code"])
        self.assertLessEqual(seen, life.ERROR_CODES)
        self.assertIn("internal", seen)


class Properties(TestCase):
    @given(st.lists(st.sampled_from(sorted(EVENTS)), max_size=40), st.integers(0, 3))
    def test_one_way_out(self, events: list[str], retries: int) -> None:
        """Whatever arrives: leases balance, at most one Final, End last and once, nothing after."""
        machine = new_life(retries)
        held, finals, ends, now = 0, 0, 0, 0.0
        for event in events:
            now += 1.0
            try:
                actions = EVENTS[event](machine, now)
            except LifeError:
                actions = machine.crash()  # what the adapter does
            if machine.state is State.CHECKING and event == "taken":
                held = 1
            for action in actions:
                self.assertEqual(ends, 0, "nothing after End")
                if isinstance(action, life.ReleaseNode):
                    held -= 1
                    self.assertEqual(held, 0)
                finals += isinstance(action, life.Final)
                ends += isinstance(action, life.End)
        self.assertLessEqual(finals, 1)
        if machine.ended:
            self.assertEqual(ends, 1)
            self.assertEqual(held, 0, "a lease held at the end was released")
            self.assertEqual(finals, 0 if machine.outcome == "client_gone" else 1)
