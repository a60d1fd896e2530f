"""Command line: ``python -m fedpurel_lite <command> ...``.

Commands
--------
pretrain   pretrain the embedded tiny CLIP on the shapes source domain
features   build (or verify) the feature cache of a world
run        one federated run from a TOML preset, ``--set key=value`` overrides
compare    several methods on the same federation, one table
report     bias-transfer report of run folders: HTML page + PNG figures
demo       the main job: execute every notebook on the embedded default, write figures/
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable

from .errors import UserError

# command -> (module, function, one-line help); modules are imported only when used
COMMANDS: dict[str, tuple[str, str, str]] = {
    "pretrain": ("fedpurel_lite.pretrain", "main", "pretrain the embedded tiny CLIP"),
    "features": ("fedpurel_lite.cli", "features_main", "build or verify a world's feature cache"),
    "run": ("fedpurel_lite.cli", "run_main", "one federated run from a TOML preset"),
    "compare": ("fedpurel_lite.cli", "compare_main", "several methods on one federation"),
    "report": ("fedpurel_lite.report", "main", "bias-transfer report (HTML + figures) of run folders"),
    "flower": ("fedpurel_lite.flower.run", "main", "the same run on the Flower engine"),
    "demo": ("fedpurel_lite.demo", "main", "execute all notebooks, write figures/"),
    "student": ("fedpurel_lite.student", "main", "notebooks without solutions or outputs"),
}


def _one_line_warnings() -> None:
    """Every distinct warning once, as one ``warning:`` line on stderr."""
    warnings.simplefilter("once")

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        print(f"warning: {message}", file=sys.stderr if file is None else file)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command's ``main(rest)``; returns the exit code.

    A :class:`~fedpurel_lite.errors.UserError` (a bad value, a missing or damaged file) is
    printed as one ``error:`` line with exit code 2; ``--debug`` shows its traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m fedpurel_lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to do")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    module, func, _ = COMMANDS[args.command]
    debug = "--debug" in argv
    if not debug:
        _one_line_warnings()
    try:
        entry: Callable[[list[str]], int | None] = getattr(importlib.import_module(module), func)
        return int(entry(argv[1:]) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
