"""Each default and each allowed value has one source: these fail when a copy comes back."""

from __future__ import annotations

import dataclasses
import inspect

from twisted.trial.unittest import TestCase

from .. import workers
from ..config import ConfigError, load_config
from ..config.schema import BALANCE, Backend, Chat, Config, Defaults, Harmony, Load, Ohttp, RateLimit, Replay, Server
from ..harmony.dialect import EFFORT
from ..protocol.chat import REASONING_EFFORT, VERBOSITY, ChatLimits
from ..protocol.life import Timeouts
from ..services.router import limits as router_limits
from ..state.interface import Limits
from ..upstream.instructions import INSTRUCTIONS
from ..upstream.pool import NodePool
from ..web.chat import StreamSettings
from ..web.request import PrivllmSite


def _choices(cls: type, name: str) -> tuple[str, ...]:
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)


def _defaults(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]


class AllowedValues(TestCase):
    def test_the_configuration_allows_the_protocol_values(self) -> None:
        self.assertEqual(_choices(Defaults, "verbosity"), VERBOSITY)
        self.assertEqual(_choices(Harmony, "reasoning_effort"), REASONING_EFFORT)

    def test_every_verbosity_level_has_an_instruction_and_a_token_default(self) -> None:
        self.assertEqual(tuple(INSTRUCTIONS), VERBOSITY)
        for level in VERBOSITY:
            self.assertIn(f"{level}_max_tokens", {f.name for f in dataclasses.fields(Chat)})
            self.assertIn(f"{level}_max_tokens", {f.name for f in dataclasses.fields(ChatLimits)})

    def test_every_reasoning_effort_reaches_harmony(self) -> None:
        self.assertEqual(tuple(EFFORT), REASONING_EFFORT)

    def test_the_pool_balances_as_configured(self) -> None:
        self.assertEqual(_choices(Backend, "balance"), BALANCE)
        self.assertEqual([NodePool([], balance).balance for balance in BALANCE], list(BALANCE))
        self.assertRaises(ValueError, NodePool, [], "random")
        self.assertEqual(NodePool([]).balance, Backend().balance)

    def test_the_token_defaults_are_checked_for_every_level(self) -> None:
        for level in VERBOSITY:
            environ = {f"PRIVLLM_CHAT__{level.upper()}_MAX_TOKENS": "2000"}
            with self.assertRaises(ConfigError) as cm:
                load_config("dev", environ=environ)
            self.assertIn(f"chat.{level}_max_tokens", str(cm.exception))


class NoRestatedDefaults(TestCase):
    def test_the_sans_io_and_adapter_settings_restate_no_default(self) -> None:
        for cls in (ChatLimits, StreamSettings, Timeouts, Limits):
            self.assertEqual(_defaults(cls), [], cls.__name__)

    def test_the_listener_and_workers_take_the_schema_values(self) -> None:
        defaults = {k: v.default for k, v in inspect.signature(PrivllmSite).parameters.items()}
        server = Server()
        self.assertEqual(
            (defaults["idle_timeout"], defaults["request_read_timeout"]),
            (server.idle_timeout, server.request_read_timeout),
        )
        workers_range = next(f.metadata["range"] for f in dataclasses.fields(Server) if f.name == "workers")
        self.assertEqual(workers_range[1], workers.MAX_WORKERS)

    def test_a_changed_schema_value_reaches_the_chat(self) -> None:
        config = Config(
            chat=Chat(max_messages=7, normal_max_tokens=11),
            defaults=Defaults(verbosity="normal"),
            backend=Backend(retries=5, idle_timeout=33.0),
            load=Load(queue_timeout=4.0),
        )
        settings = StreamSettings.from_config(config)
        self.assertEqual(settings.limits, config.chat_limits())
        self.assertEqual(
            (settings.limits.max_messages, settings.limits.normal_max_tokens, settings.limits.default_verbosity),
            (7, 11, "normal"),
        )
        self.assertEqual((settings.retries, settings.idle_timeout, settings.queue_timeout), (5, 33.0, 4.0))

    def test_the_relay_budgets_reach_the_state_limits(self) -> None:
        ohttp = Ohttp(relay_rate=3.5, relay_burst=7, relay_streams=9, relay_replay_entries=11)
        budget = router_limits(Config(ohttp=ohttp)).address_budget(relay=True)
        self.assertEqual((budget.rate, budget.burst, budget.streams, budget.replay_entries), (3.5, 7, 9, 11))
        client = router_limits(Config()).address_budget(relay=False)
        self.assertEqual(
            (client.rate, client.burst, client.streams, client.replay_entries),
            (
                RateLimit().per_address_rate,
                RateLimit().per_address_burst,
                Load().max_streams_per_address,
                Replay().max_entries_per_address,
            ),
        )

    def test_every_chat_setting_reaches_the_limits(self) -> None:
        limits = dataclasses.asdict(Config().chat_limits())
        for name, value in vars(Chat()).items():
            self.assertEqual(limits[name], value)
