"""One exception base per layer, each error with a code: every exception class defined in a
privllm module derives from its package's base and carries a short stable `code`, so an
error added without a base, or without a code, fails here."""

from __future__ import annotations

import inspect
import re
from types import ModuleType

from twisted.trial.unittest import TestCase

from ..client import ClientError
from ..config import ConfigError
from ..harmony.errors import HarmonyError
from ..keys.errors import KeysError
from ..protocol.errors import REPLAY, ProtocolError, RequestRejected
from ..services.errors import StartError
from ..state.errors import StateError
from ..upstream.errors import UpstreamError
from ..upstream.events import UpstreamRequestError
from .helpers import privllm_modules

BASES: dict[str, type[Exception]] = {
    "privllm.protocol": ProtocolError,
    "privllm.config": ConfigError,
    "privllm.keys": KeysError,
    "privllm.state": StateError,
    "privllm.upstream": UpstreamError,
    "privllm.harmony": HarmonyError,
    "privllm.client": ClientError,
    "privllm.services": StartError,
}
# A top-level module is a layer of one file: its errors need a code, not a shared base.
UNCHECKED: set[str] = set()
CODE = re.compile(r"[a-z][a-z_]{1,39}")


def errors_of(module: ModuleType) -> list[type[BaseException]]:
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__
    ]


def package_of(module: ModuleType) -> str | None:
    parts = module.__name__.split(".")
    is_package = hasattr(module, "__path__")
    return ".".join(parts[:2]) if len(parts) > 2 or is_package else None


def problems(modules: list[ModuleType]) -> list[str]:
    """What breaks the rule, one line each: an error outside its layer's base, without a code
    of its own, or with a code another error has."""
    found: list[str] = []
    seen: dict[str, str] = {}
    for module in modules:
        package = package_of(module)
        for error in errors_of(module):
            name = f"{module.__name__}.{error.__name__}"
            if package is not None and package not in BASES:
                found.append(f"{name}: the layer {package} has no error base yet")
            elif package is not None and not issubclass(error, BASES[package]):
                found.append(f"{name} is no {BASES[package].__name__}")
            code = vars(error).get("code")
            if not isinstance(code, str) or not CODE.fullmatch(code):
                found.append(f"{name} has no code of its own")
            elif code in seen:
                found.append(f"{name} reuses the code of {seen[code]}")
            else:
                seen[code] = name
    return found


def stray(name: str, source: str, **names: object) -> ModuleType:
    """A module of the given name, made from `source` with `names` in scope."""
    module = ModuleType(name)
    vars(module).update(names)
    exec(source, vars(module))
    return module


class Errors(TestCase):
    def checked(self) -> list[ModuleType]:
        return [m for m in privllm_modules() if m.__name__ not in UNCHECKED]

    def test_the_walk_finds_the_errors(self) -> None:
        found = {e for m in self.checked() for e in errors_of(m)}
        self.assertTrue({RequestRejected, UpstreamRequestError, ConfigError, ClientError} <= found)
        self.assertGreater(len(found), 25)

    def test_every_error_has_its_layer_base_and_a_code(self) -> None:
        self.assertEqual(problems(self.checked()), [])

    def test_an_error_without_a_base_or_a_code_is_found(self) -> None:
        bare = stray("privllm.state.stray", "class Stray(Exception):\n    pass\n")
        self.assertEqual(
            problems([bare]),
            ["privllm.state.stray.Stray is no StateError", "privllm.state.stray.Stray has no code of its own"],
        )

    def test_an_inherited_or_repeated_code_is_found(self) -> None:
        source = "class A(S):\n    code = 'x_one'\nclass B(S):\n    code = 'x_one'\nclass C(A):\n    pass\n"
        module = stray("privllm.state.stray", source, S=StateError)
        self.assertEqual(
            problems([module]),
            [
                "privllm.state.stray.B reuses the code of privllm.state.stray.A",
                "privllm.state.stray.C has no code of its own",
            ],
        )

    def test_a_layer_without_a_base_is_found(self) -> None:
        module = stray("privllm.web.stray", "class Stray(Exception):\n    code = 'stray'\n")
        self.assertEqual(problems([module]), ["privllm.web.stray.Stray: the layer privllm.web has no error base yet"])

    def test_an_instance_may_carry_a_more_precise_code(self) -> None:
        """Where the error is answered on the wire, the instance carries the wire code."""
        self.assertEqual(RequestRejected(REPLAY).code, "replay")
        self.assertEqual(RequestRejected.code, "rejected")
        self.assertEqual(UpstreamRequestError("exceed_context_size_error").code, "exceed_context_size_error")
