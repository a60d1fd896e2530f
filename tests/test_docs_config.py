"""The docs show the config and the core as they are: every plugin key with its allowed values, the example as run."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from fedpurel_lite.config.registry import AXES, sections

DOC = Path(__file__).resolve().parents[1] / "docs" / "experiments.md"


def test_every_plugin_key_is_documented_with_its_allowed_values():
    text = DOC.read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    missing, wrong, checked = [], [], []
    for axis in AXES:
        for plugin, cls in sections(axis).items():
            for f in fields(cls):
                key = f"{axis}.{plugin}.{f.name}"
                checked.append(key)
                row = next((line for cell, line in rows.items() if f"`{key}`" in cell), None)
                allowed = f.metadata.get("range") or ", ".join(f.metadata.get("choices") or ())
                if row is None:
                    missing.append(key)
                elif allowed and allowed not in row:
                    wrong.append(f"{key}: {allowed}")
    assert {"peft.lora.rank", "world.folder.root", "world.shapes.variant"} <= set(checked)
    assert not missing, f"undocumented plugin keys: {missing}"
    assert not wrong, f"documented with other allowed values: {wrong}"


def test_the_readme_shows_the_core_example_as_it_is_run():
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    example = (DOC.parents[1] / "examples" / "core_loop.py").read_text(encoding="utf-8")
    body = example.split("\n", 1)[1].strip()  # without its one-line docstring
    assert f"```python\n{body}\n```" in readme
    assert 20 <= len([line for line in body.splitlines() if line.strip()]) <= 35
