"""Nothing outside a plugin's own module names it: the engine reaches plugins only through registries.

Every registered world, PEFT, stage-1 objective and personalization kind is looked for as a string
literal in every module of the package. A literal is allowed in the plugin's own module, in the
registries of composed methods (``methods.py`` and a plugin's ``METHOD_RECORDS``), in the table of
moved config keys, and where the same word means something else (listed below, each with its
meaning). Method names (some equal a personalization kind's: the method ``folio`` uses the kind
``folio``), in turn, may appear in the method registry and in the views that choose which methods to
show, never in the engine.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import fedpurel_lite
from fedpurel_lite.methods import METHODS
from fedpurel_lite.peft import PEFTS
from fedpurel_lite.personal import PERSONALIZATIONS
from fedpurel_lite.purify import OBJECTIVES
from fedpurel_lite.worlds import WORLD_PLUGINS

PACKAGE = Path(fedpurel_lite.__file__).parent

#: modules that compose plugins by name: the method registry and the table of moved keys
COMPOSERS = {"methods", "config.keys"}

#: (module, word): what the word means there -- a homonym of a plugin name, not a reference to it
HOMONYMS: dict[tuple[str, str], str] = {
    ("data.longtail", "head"): "the class group",
    ("engine.metrics", "head"): "the class group",
    ("cli.run", "head"): "the class group's column",
    ("flower.server_app", "head"): "the class group's metric",
    ("data.cache_entry", "shapes"): "tensor shapes in a cache manifest",
    ("cli.pretrain", "shapes"): "the caption set of the embedded world's class names",
    ("config.sections", "shapes"): "the default world of a config",
    ("config.sections", "head"): "the default PEFT of a config",
}

#: engine modules: they must not name a method either
ENGINE = {"engine.assembly", "data.bank", "engine.client", "engine.simulate", "engine.local", "engine.personalize",
          "engine.analysis", "engine.workers", "engine.checkpoint",
          "engine.preflight", "engine.finite", "engine.resources", "data.features", "data.token_bank",
          "data.partition", "flower.client_app",
          "flower.strategy"}


def _plugins() -> dict[str, set[str]]:
    """Every plugin name and the modules that define it."""
    owners: dict[str, set[str]] = {}
    for registry in (PEFTS, WORLD_PLUGINS, OBJECTIVES, PERSONALIZATIONS):
        for name in registry.names():
            spec = registry.get(name)
            obj = spec if isinstance(spec, type) else getattr(spec, "build", None) or getattr(spec, "describe", spec)
            module = inspect.getmodule(obj) or inspect.getmodule(type(obj))
            assert module is not None, name
            owners.setdefault(name, set()).add(module.__name__.removeprefix("fedpurel_lite."))
    return owners


def _literals(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, text, in a method record)`` for every string constant of a module (a record: a dict literal
    with ``stage1`` / ``personal`` keys, as in a plugin's ``METHOD_RECORDS``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    records = {id(n) for node in ast.walk(tree) if isinstance(node, ast.Dict)
               and {"stage1", "personal"} & {k.value for k in node.keys if isinstance(k, ast.Constant)}
               for n in ast.walk(node)}
    return [(n.lineno, n.value, id(n) in records) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"), p)
            for p in sorted(PACKAGE.rglob("*.py"))]


def test_no_plugin_is_named_outside_its_module():
    owners, methods = _plugins(), set(METHODS.names())
    assert {"head", "prompt", "lora", "bitfit", "shapes", "folder", "purify", "residual"} <= set(owners)
    found = [f"{module}.py:{line}: {text!r} (defined in {', '.join(sorted(owners[text]))})"
             for module, path in _modules() for line, text, in_records in _literals(path)
             if text in owners and module not in owners[text] and module not in COMPOSERS and not in_records
             and (module, text) not in HOMONYMS and not (text in methods and module not in ENGINE)]
    assert not found, "plugin names outside their modules:\n" + "\n".join(found)


def test_the_engine_names_no_method():
    methods = set(METHODS.names())
    found = [f"{module}.py:{line}: {text!r}" for module, path in _modules() if module in ENGINE
             for line, text, _ in _literals(path) if text in methods and (module, text) not in HOMONYMS]
    assert not found, "method names in the engine:\n" + "\n".join(found)


def test_every_listed_homonym_is_still_there():
    """A stale entry would let a real reference slip through later."""
    modules = dict(_modules())
    for module, word in HOMONYMS:
        assert any(text == word for _, text, _ in _literals(modules[module])), (module, word)


@pytest.mark.parametrize("word", ["head", "lora"])
def test_the_check_sees_a_plugin_named_in_the_engine(tmp_path, word):
    """The scan would catch ``if config.method.peft == "lora"`` in an engine module."""
    path = tmp_path / "engine.py"
    path.write_text(f'def f(config):\n    return config.method.peft == "{word}"\n', encoding="utf-8")
    assert (2, word, False) in _literals(path) and word in _plugins()
