"""Command line: ``python -m fedpurel_lite <command> ...``.

Commands
--------
pretrain   pretrain the embedded tiny CLIP on the shapes source domain
features   build (or verify) the feature cache of a world
run        one federated run from a TOML preset, ``--set key=value`` overrides
compare    several methods on the same federation, one table
report     bias-transfer report of run folders: one self-contained HTML page
flower     the same run on the Flower engine (simulation, flwr run, deployment, certificates)
demo       the main job: execute every notebook on the embedded default, write figures/, build the site
site       build the course site (build/site/) from the stored notebooks and docs/
student    the student edition: the series without solutions or outputs
explore-grid  precompute the explorers' and the app's answers on their slider grids (data/explore/)
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from .errors import ConfigError, UserError

# command -> (module, function, one-line help); modules are imported only when used
COMMANDS: dict[str, tuple[str, str, str]] = {
    "pretrain": ("fedpurel_lite.cli.pretrain", "main", "pretrain the embedded tiny CLIP"),
    "features": ("fedpurel_lite.cli.run", "features_main", "build or verify a world's feature cache"),
    "run": ("fedpurel_lite.cli.run", "run_main", "one federated run from a TOML preset"),
    "compare": ("fedpurel_lite.cli.run", "compare_main", "several methods on one federation"),
    "report": ("fedpurel_lite.views.report", "main", "bias-transfer report (HTML + figures) of run folders"),
    "flower": ("fedpurel_lite.flower.run", "main", "the same run on the Flower engine"),
    "demo": ("fedpurel_lite.cli.demo", "main", "execute all notebooks, write figures/"),
    "explore-grid": ("fedpurel_lite.views.explore_grid", "main", "precompute the explorers' answers (data/explore/)"),
    "site": ("fedpurel_lite.cli.site", "main",
             "build the course site (build/site/) from the stored notebooks and docs/"),
    "student": ("fedpurel_lite.cli.student", "main", "notebooks without solutions or outputs"),
}


def _one_line_warnings() -> None:
    """Every distinct warning once, as one ``warning:`` line on stderr."""
    warnings.simplefilter("once")

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        print(f"warning: {message}", file=sys.stderr if file is None else file)

    warnings.showwarning = show


@contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """Turn every argparse usage error, of any command's parser, into a :class:`ConfigError`.

    ``argparse.ArgumentParser.error`` is the documented hook for this ("If you override this in a
    subclass ..."); overriding it on the class for the duration of one command reaches the parsers
    of every command module (and their sub-parsers) without each needing its own subclass. The
    message keeps the parser's name and adds where the usage is: ``error: python -m fedpurel_lite
    run: unrecognized arguments: --bogus (see --help)``. ``--help`` is untouched.
    """
    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


def _one_line(message: object) -> str:
    """A message on one line (a value holding a newline cannot split the ``error:`` line)."""
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command's ``main(rest)``; returns the exit code.

    A :class:`~fedpurel_lite.errors.UserError` (a bad value, a missing or damaged file, a usage
    error of any command's options) is printed as one ``error:`` line with exit code 2; ``--debug``
    shows its traceback instead. ``--help`` (``-h``) prints the help of the program or command.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m fedpurel_lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to do")
    if argv and argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    debug = "--debug" in argv
    if not debug:
        _one_line_warnings()
    try:
        with one_line_usage_errors():
            if not argv:
                raise ConfigError(f"no command given; one of {', '.join(sorted(COMMANDS))} "
                                  "(see python -m fedpurel_lite --help)")
            args = parser.parse_args(argv[:1])
            module, func, _ = COMMANDS[args.command]
            entry: Callable[[list[str]], int | None] = getattr(importlib.import_module(module), func)
            return int(entry(argv[1:]) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help of a command, or a command's own exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
