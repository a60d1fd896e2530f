"""The bounded JSON/TOML reader: size checked before reading, nesting bounded without recursion, one error class."""

from __future__ import annotations

import pytest

from fedpurel_lite.data.safe_load import MAX_DEPTH, load_json, load_toml, loads_json, nesting_depth
from fedpurel_lite.errors import ConfigError, IntegrityError


def test_nesting_depth_counts_lists_and_dicts_without_recursion():
    assert nesting_depth(1) == 0 and nesting_depth([]) == 1 and nesting_depth({"a": [1, {"b": []}]}) == 4
    value: list = []
    for _ in range(100_000):  # far deeper than Python's recursion limit
        value = [value]
    assert nesting_depth(value) == 100_001


@pytest.mark.parametrize(("text", "pattern"), [
    ("[" * 5000 + "]" * 5000, "nested too deeply to parse"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nested {MAX_DEPTH + 1} levels deep; at most {MAX_DEPTH}"),
    ('{"a": ', "not readable JSON: Expecting value at line 1, column 7"),
])
def test_json_text(text, pattern):
    with pytest.raises(IntegrityError, match=pattern):
        loads_json(text, "f.json")
    assert loads_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "f.json") is not None


def test_files_are_bounded_before_they_are_read(tmp_path):
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 100 + "0]")
    with pytest.raises(IntegrityError, match=r"big.json: 203 bytes, larger than the 100 allowed"):
        load_json(big, "manifest", max_bytes=100)
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(IntegrityError, match="not UTF-8 text"):
        load_json(tmp_path / "latin.json")
    with pytest.raises(IntegrityError, match="missing"):
        load_json(tmp_path / "none.json")
    with pytest.raises(IntegrityError, match="not a regular file"):
        load_json(tmp_path)


def test_toml_errors_are_of_the_class_asked_for(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_toml(deep, "config file", error=ConfigError)
    deep.write_text("x = 1\nx = 2\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_toml(deep, "config file", error=ConfigError)
    deep.write_text("[a]\nb = 1\n")
    assert load_toml(deep) == {"a": {"b": 1}}
