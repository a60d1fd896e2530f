"""Property-based tests of the config surface: any TOML table or ``--set`` value is either a valid config or one error.

The property, for every key of the schema (read from the dataclasses, so it follows refactors) and
arbitrary values, types, nesting and sizes: either validation passes and every value has its type,
is finite and lies in its documented range or choice list, or exactly one
:class:`~fedpurel_lite.errors.UserError` with a one-line message is raised -- never another
exception -- and no file is written. The loading functions are driven directly (fast); a few
examples go through the real command line.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import fields
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedpurel_lite.config import RunConfig
from fedpurel_lite.config.checks import CHOICES as CORE_CHOICES
from fedpurel_lite.config.checks import MAX_TEXT
from fedpurel_lite.config.checks import RANGES as CORE_RANGES
from fedpurel_lite.config.registry import AXES, sections
from fedpurel_lite.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
#: a fixed, reproducible search within the suite's budget; FEDPUREL_FUZZ_EXAMPLES=5000 searches deeper (random)
_DEEP = int(os.environ.get("FEDPUREL_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(max_examples=_DEEP or 150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=not _DEEP, database=None)


def _kind(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


#: every key of the schema and its kind ("int", "float", "bool", "str"), from the dataclasses: the core tables
#: and every plugin's own section (``peft.lora.rank``)
SCHEMA: dict[str, str] = {f"{sec.name}.{f.name}": _kind(f.type) for sec in fields(RunConfig) if sec.name != "plugins"
                          for f in fields(sec.default_factory)}  # type: ignore[arg-type]
CHOICES, RANGES = dict(CORE_CHOICES), dict(CORE_RANGES)
for _axis in AXES:
    for _plugin, _cls in sections(_axis).items():
        for _f in fields(_cls):
            _key = f"{_axis}.{_plugin}.{_f.name}"
            SCHEMA[_key] = _kind(_f.type)
            if _f.metadata.get("choices"):
                CHOICES[_key] = _f.metadata["choices"]
            if _f.metadata.get("range"):
                RANGES[_key] = _f.metadata["range"]
SECTIONS = sorted({k.split(".")[0] for k in SCHEMA})
BARE = sorted({k.split(".")[-1] for k in SCHEMA})


def _bounds(spec: str) -> tuple[float, bool, float, bool]:
    """(low, low closed, high, high closed) of a documented range, parsed independently of the package."""
    m = re.fullmatch(r"([\[(])\s*(-?[\d.e+]+)\s*,\s*(-?[\d.e+]+)\s*([\])])", spec)
    assert m, f"range {spec!r} is not a bounded interval"
    return float(m[2]), m[1] == "[", float(m[3]), m[4] == "]"


def _in_documented_range(key: str, value: object) -> bool:
    kind = SCHEMA[key]
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return (isinstance(value, str) and len(value) <= MAX_TEXT and (key not in CHOICES or value in CHOICES[key])
                and not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in value))
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    if kind == "float" and (not isinstance(value, float) or not math.isfinite(value)):
        return False
    if key in CHOICES and value not in CHOICES[key]:
        return False
    if key not in RANGES:
        return True
    low, low_closed, high, high_closed = _bounds(RANGES[key])
    return ((value >= low if low_closed else value > low) and  # type: ignore[operator]
            (value <= high if high_closed else value < high))  # type: ignore[operator]


def _outcome(build):
    """Run ``build()``: a valid config (checked against the schema) or one UserError with a one-line message."""
    before = sorted(os.listdir("."))
    try:
        cfg = build()
    except UserError as exc:
        msg = str(exc)
        assert msg and msg.isprintable() and len(msg) <= 1000, repr(msg)
        assert sorted(os.listdir(".")) == before
        return None
    assert isinstance(cfg, RunConfig)
    for key, value in cfg.items():
        assert _in_documented_range(key, value), (key, value)
        assert key in SCHEMA
    assert sorted(os.listdir(".")) == before
    return cfg


@pytest.fixture(autouse=True)
def _in_empty_folder(tmp_path, monkeypatch):
    """Each test runs in an empty folder, so a stray file written would show."""
    monkeypatch.chdir(tmp_path)


# ----------------------------------------------------------------------------- values
def _near(key: str) -> st.SearchStrategy:
    """Values at and around a key's range ends, of its own type and of the others."""
    if key not in RANGES:
        return st.nothing()
    low, _, high, _ = _bounds(RANGES[key])
    edges = [low, high, math.nextafter(low, -math.inf), math.nextafter(high, math.inf), (low + high) / 2, -0.0]
    ints = [int(low), int(high), int(high) + 1, int(low) - 1, 2**63, -(2**63), 10**400]
    return st.sampled_from(edges) | st.sampled_from(ints)


SCALARS = (st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | st.binary(max_size=8)
           | st.text(alphabet="x", min_size=MAX_TEXT - 2, max_size=MAX_TEXT + 2) | st.none()
           | st.sampled_from(["", " ", "\x00", "a\nb", "\u2028", "nan", "inf", "-0", "1_0", "_1", "1e308", "0x10",
                              "true", "True", "١٢", "1" * 500]))
NESTED = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=3),
                      max_leaves=8)


def _value_for(key: str) -> st.SearchStrategy:
    kind = SCHEMA[key]
    typed = {"int": st.integers(-(2**70), 2**70), "float": st.floats(), "bool": st.booleans(),
             "str": st.sampled_from(CHOICES.get(key, ("x",))) | st.text(max_size=20)}[kind]
    return typed | _near(key) | NESTED


KEYS = st.sampled_from(sorted(SCHEMA))
ANY_KEY = KEYS | st.sampled_from(BARE + ["world", "method", "name"]) | st.text(max_size=12)


@st.composite
def tables(draw) -> dict:
    """A nested config table: known sections and keys with near-valid or arbitrary values, plus strays."""
    data: dict = {}
    for key in draw(st.lists(KEYS, max_size=6, unique=True)):
        *path, name = key.split(".")
        table = data
        for part in path:
            table = table.setdefault(part, {})
        table[name] = draw(_value_for(key))
    if draw(st.booleans()):
        stray = draw(st.sampled_from(SECTIONS + BARE) | st.text(max_size=10))
        data[stray] = draw(NESTED)
    return data


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# ----------------------------------------------------------------------------- properties
@SETTINGS
@given(tables())
@example({"stage1": {"lr": 10**400}})
@example({"world": {"root": "a\x00b"}})
@example({"world": {"name": "folder", "folder": {"root": "a\x00b"}}})
@example({"peft": {"lora": {"rank": 0}}})
@example({"method": {"lora_rank": 4}})
@example({"world": {"name": "x" * (MAX_TEXT + 1)}})
@example({"stage1": {1: 2, "lr": 0.1}})
@example({1: {}, "stage1": {}})
@example({"rounds": _deep(50)})
@example({"stage1": {"lr": 100.0, "weight_decay": 1.0}})
def test_any_table_is_a_valid_config_or_one_error(data):
    _outcome(lambda: RunConfig.from_dict(data))


@SETTINGS
@given(st.lists(st.tuples(ANY_KEY, st.text(max_size=30) | st.sampled_from(["1e308", "9223372036854775808", "nan",
                                                                           "-1", "0", "1_000", "_5", "1__0"])),
                max_size=4))
@example([("rounds", "9" * 5000)])
@example([("lr", "1e999")])
@example([("rounds", "_1")])
@example([("batch_size", "9223372036854775808")])
@example([("seed", "٣")])
def test_any_set_pairs_are_a_valid_config_or_one_error(pairs):
    _outcome(lambda: RunConfig().with_overrides([f"{k}={v}" for k, v in pairs]))


@SETTINGS
@given(st.dictionaries(ANY_KEY, NESTED | st.floats(), max_size=4) | st.lists(st.text(max_size=10), max_size=3))
@example({"lr": 10**400})
@example({1: 2})
@example(["lr"])
def test_any_python_overrides_are_a_valid_config_or_one_error(overrides):
    _outcome(lambda: RunConfig().with_overrides(overrides))


@SETTINGS
@given(tables() | st.dictionaries(st.text(max_size=10), NESTED, max_size=3))
def test_any_toml_file_is_a_valid_config_or_one_error(data):
    folder = tempfile.mkdtemp()
    path = Path(folder) / "c.toml"
    try:
        try:
            path.write_text(tomli_w.dumps(data))
        except Exception:  # not representable in TOML (None, bytes, ...): write it as text instead
            path.write_text(f"x = {data!r}\n")
        _outcome(lambda: RunConfig.load(path))
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(folder)


@SETTINGS
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
@example(b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n")
@example(b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000 + b"\n")
@example(b"[stage1]\nlr = 0.1\nlr = 0.2\n")
@example(b"\xff\xfe[stage1]\n")
@example(b"[stage1]\nlr = 1e400\n")
def test_any_bytes_as_a_toml_file_are_a_valid_config_or_one_error(raw):
    folder = tempfile.mkdtemp()
    path = Path(folder) / "c.toml"
    try:
        path.write_bytes(raw)
        _outcome(lambda: RunConfig.load(path))
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(folder)


def test_deeply_nested_python_values_are_one_error():
    """Too deep for Hypothesis to print as an example, so a regular case."""
    for data in ({"stage1": {"lr": _deep(5000)}}, {"world": _deep(5000)}, {"rounds": _deep(5000)}):
        assert _outcome(lambda d=data: RunConfig.from_dict(d)) is None
    assert _outcome(lambda: RunConfig().with_overrides({"lr": _deep(5000)})) is None


def test_unreadable_config_paths_are_one_error(tmp_path):
    for path in (tmp_path, tmp_path / "missing.toml", tmp_path / "a\x00b.toml"):
        _outcome(lambda p=path: RunConfig.load(p))


def test_every_numeric_key_has_a_bounded_documented_range():
    numeric = [k for k, kind in SCHEMA.items() if kind in ("int", "float")]
    assert numeric and set(numeric) <= set(RANGES)
    for key in numeric:
        low, _, high, _ = _bounds(RANGES[key])
        assert math.isfinite(low) and math.isfinite(high) and low < high


# ----------------------------------------------------------------------------- through the real command line
@pytest.mark.parametrize(("toml", "sets", "pattern"), [
    ("a = " + "[" * 3000 + "]" * 3000 + "\n", [], r"nested too deeply"),
    ('[world.folder]\nroot = "' + "r" * 5000 + '"\n', [],
     r"world.folder.root='r+\.\.\.r+': 5000 characters; allowed at most 4096"),
    ("[stage1]\nlr = 1e400\n", [], r"stage1.lr=inf: allowed a finite number"),
    (None, ["rounds=" + "9" * 5000], r"federation.rounds='9+\.\.\.9+': allowed \[1, 1000000\]"),
    (None, ["ctx_init=a\tb"], r"peft.prompt.ctx_init='a\\tb': holds the control character"),
    (None, ["rounds=_1"], r"federation.rounds='_1': allowed an integer"),
    ("[method]\nname = 'fedavg'\nlora_rank = 4\n", [], r"method.lora_rank moved to peft.lora.rank \("),
    (None, ["method.n_ctx=8"], r"method.n_ctx moved to peft.prompt.n_ctx \("),
], ids=["deep-toml", "long-string", "overflowing-float", "huge-integer-text", "control-character",
        "misplaced-underscore", "moved-key-in-toml", "moved-key-set"])
def test_hostile_config_values_through_the_cli(toml, sets, pattern, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(toml if toml is not None else (ROOT / "configs" / "embedded.toml").read_text())
    proc = subprocess.run([sys.executable, "-m", "fedpurel_lite", "run", "--config", str(config), "--out",
                           str(tmp_path / "out"), "--set", *sets], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
