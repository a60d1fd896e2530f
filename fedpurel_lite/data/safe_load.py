"""Bounded reading of the JSON and TOML files the toolkit is handed: one place, one kind of error.

Every JSON or TOML document read from disk (a config preset, a split file, a checkpoint or result
manifest, a cache manifest) goes through :func:`load_json` / :func:`load_toml`, which bound

- the **size**: the file is ``stat``-ed before it is read, and one larger than ``max_bytes`` is
  refused without reading it;
- the **nesting**: the standard parsers recurse once per level, so a document nested a few
  thousand levels deep ends in a ``RecursionError`` inside them; here that, and any document nested
  deeper than ``max_depth`` (checked after parsing, without recursion), is reported instead, so the
  callers' own recursive walks (hashing, cleaning, comparing) never meet such a value;
- the **encoding**: UTF-8 only.

Each failure is one exception of the class the caller names (an
:class:`~fedpurel_lite.errors.IntegrityError` by default: a damaged file; a
:class:`~fedpurel_lite.errors.ConfigError` for a config preset), whose message is one line naming
the file, so the command line prints it as one ``error:`` line.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, UserError

#: deepest nesting accepted (the toolkit's own files nest at most 6 levels: result history blocks)
MAX_DEPTH = 32
#: largest JSON document read (a 1,000-round result with per-class histories is about 40 MB)
MAX_JSON_BYTES = 512 * 1024 * 1024
#: largest TOML document read (presets are a few KB)
MAX_TOML_BYTES = 4 * 1024 * 1024


def nesting_depth(value: Any) -> int:
    """Levels of lists and dicts in ``value`` (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _one_line(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _name(what: str, path: Path) -> str:
    return f"{what} {path}" if what else str(path)


def read_bounded(path: str | Path, what: str, max_bytes: int, error: type[UserError] = IntegrityError) -> str:
    """The UTF-8 text of ``path``, refused unread when larger than ``max_bytes``.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        How the message names it (``"split file"``).
    max_bytes : int
        Largest size accepted.
    error : type of UserError
        Raised on every failure (a missing file included).
    """
    path = Path(path)
    name = _name(what, path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise error(f"{name}: not a regular file")
        if size > max_bytes:
            raise error(f"{name}: {size:,} bytes, larger than the {max_bytes:,} allowed")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{name}: missing") from None
    except UnicodeDecodeError as exc:
        raise error(f"{name}: not UTF-8 text ({_one_line(exc)})") from None
    except OSError as exc:
        raise error(f"{name}: cannot be read ({exc.strerror or exc})") from None


def _check_depth(value: Any, source: str, max_depth: int, error: type[UserError]) -> Any:
    depth = nesting_depth(value)
    if depth > max_depth:
        raise error(f"{source}: nested {depth} levels deep; at most {max_depth} allowed")
    return value


def loads_json(text: str, source: str, max_depth: int = MAX_DEPTH, error: type[UserError] = IntegrityError) -> Any:
    """Parse JSON text, bounding its nesting (``source`` names it in messages).

    Raises
    ------
    UserError
        Of class ``error``: not JSON (with line and column), or nested deeper than ``max_depth``.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{source}: nested too deeply to parse; at most {max_depth} levels allowed") from None
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not readable JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except (ValueError, TypeError) as exc:  # numbers too long to convert, and similar
        raise error(f"{source}: not readable JSON ({_one_line(exc)})") from None
    return _check_depth(value, source, max_depth, error)


def load_json(path: str | Path, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH,
              error: type[UserError] = IntegrityError) -> Any:
    """Read and parse a JSON file within the size and nesting bounds (see the module docstring)."""
    return loads_json(read_bounded(path, what, max_bytes, error), _name(what, Path(path)), max_depth, error)


def loads_toml(text: str, source: str, max_depth: int = MAX_DEPTH, error: type[UserError] = IntegrityError
               ) -> dict[str, Any]:
    """Parse TOML text, bounding its nesting (``source`` names it in messages).

    Raises
    ------
    UserError
        Of class ``error``: not TOML (duplicate keys included), or nested deeper than ``max_depth``.
    """
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise error(f"{source}: nested too deeply to parse; at most {max_depth} levels allowed") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source} is not valid TOML: {_one_line(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise error(f"{source} is not valid TOML ({_one_line(exc)})") from None
    checked: dict[str, Any] = _check_depth(value, source, max_depth, error)
    return checked


def load_toml(path: str | Path, what: str = "TOML file", max_bytes: int = MAX_TOML_BYTES, max_depth: int = MAX_DEPTH,
              error: type[UserError] = IntegrityError) -> dict[str, Any]:
    """Read and parse a TOML file within the size and nesting bounds (see the module docstring)."""
    return loads_toml(read_bounded(path, what, max_bytes, error), _name(what, Path(path)), max_depth, error)
