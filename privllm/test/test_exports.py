"""Every privllm module names its public names in `__all__` (docs/architecture.md, "Public
names"): exactly what it defines without a leading underscore, its logger aside. A package's
`__init__` that re-exports names lists exactly those. A name added without being listed, or
listed and gone, fails here."""

from __future__ import annotations

import ast
import inspect
from types import ModuleType

from twisted.trial.unittest import TestCase

from .helpers import privllm_modules

# Owned by rewrites under way elsewhere: each gets its __all__ with that rewrite.
UNCHECKED = {"privllm.config.schema"}


def defined(tree: ast.Module) -> set[str]:
    """The names a module's own top-level statements bind, without a leading underscore; its
    Logger, `log`, is not a name for others to use."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                names.update(e.id for e in elements if isinstance(e, ast.Name))
    return {name for name in names if not name.startswith("_") and name != "log"}


def reexported(tree: ast.Module) -> set[str]:
    return {
        alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }


def problems(module: ModuleType, source: str) -> list[str]:
    tree = ast.parse(source)
    is_package = hasattr(module, "__path__")
    expected = reexported(tree) if is_package else defined(tree)
    listed = getattr(module, "__all__", None)
    if listed is None:
        return [f"{module.__name__} has no __all__"] if expected else []
    found = [f"{module.__name__}.__all__ lacks {name}" for name in sorted(expected - set(listed))]
    found += [f"{module.__name__}.__all__ lists {name}, not its own" for name in sorted(set(listed) - expected)]
    if len(listed) != len(set(listed)):
        found.append(f"{module.__name__}.__all__ lists a name twice")
    return found


def stray(name: str, source: str) -> tuple[ModuleType, str]:
    module = ModuleType(name)
    exec(source, vars(module))
    return module, source


class Exports(TestCase):
    def test_every_module_lists_its_public_names(self) -> None:
        modules = [m for m in privllm_modules() if m.__name__ not in UNCHECKED]
        self.assertGreater(len(modules), 70)
        found = [line for m in modules for line in problems(m, inspect.getsource(m))]
        self.assertEqual(found, [])

    def test_the_reexporting_packages_are_checked(self) -> None:
        checked = {m.__name__ for m in privllm_modules() if hasattr(m, "__path__") and hasattr(m, "__all__")}
        self.assertEqual(checked, {"privllm.client", "privllm.config"})

    def test_a_name_not_listed_is_found(self) -> None:
        source = "__all__ = ['kept']\nLIMIT = 3\n_private = 1\nlog = None\ndef kept(): pass\nclass New: pass\n"
        self.assertEqual(
            problems(*stray("privllm.web.stray", source)),
            ["privllm.web.stray.__all__ lacks LIMIT", "privllm.web.stray.__all__ lacks New"],
        )

    def test_a_listed_name_that_is_gone_or_imported_is_found(self) -> None:
        source = "from os import path\n__all__ = ['gone', 'kept', 'kept', 'path']\nkept = 2\n"
        self.assertEqual(
            problems(*stray("privllm.web.stray", source)),
            [
                "privllm.web.stray.__all__ lists gone, not its own",
                "privllm.web.stray.__all__ lists path, not its own",
                "privllm.web.stray.__all__ lists a name twice",
            ],
        )

    def test_a_module_without_all_is_found(self) -> None:
        self.assertEqual(problems(*stray("privllm.web.stray", "def f(): pass\n")), ["privllm.web.stray has no __all__"])
