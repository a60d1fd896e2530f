"""The ``run``, ``compare`` and ``features`` commands of ``python -m fedpurel_lite``.

``run`` writes ``result.json`` + ``final_state.safetensors`` into its output folder and prints the
results table: method × model (global on the balanced test set / personal on the client splits) ×
overall / head / medium / tail. Every input is checked before any work starts, and every user
error is one ``error:`` line (see :func:`fedpurel_lite.__main__.main`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..config import RunConfig
from ..errors import ConfigError

#: the comparison of the README: zero-shot, FedAvg, FedPuReL-global and its ablations, the PFL baselines
#: and full FedPuReL
DEFAULT_COMPARE: tuple[str, ...] = ("zero-shot", "fedavg", "fedavg-la", "fedpurel-global", "fedpurel-global-kl",
                                    "local-only", "local-ft", "fedrep", "interp", "folio", "fedpurel")
COLUMNS = {"accuracy": "overall", "head": "head", "medium": "medium", "tail": "tail", "macro_f1": "macro-F1"}


def results_table(results: Mapping[str, object], summary: str = "last10") -> pd.DataFrame:
    """One row per (method, model): global model on the balanced test set, personal models on the client splits."""
    rows = []
    for name, res in results.items():
        block = res.summary[summary]  # type: ignore[attr-defined]
        for model, part in (("global", "gm"), ("personal", "pm")):
            rows.append({"method": name, "model": model, **{COLUMNS[k]: block[part].get(k) for k in COLUMNS}})
    return pd.DataFrame(rows).set_index(["method", "model"]).astype(float).round(2)


def print_results(results: Mapping[str, object], summary: str = "last10") -> pd.DataFrame:
    """Print :func:`results_table` (accuracies in %, mean of the last 10 rounds by default)."""
    table = results_table(results, summary)
    print(f"accuracy (%), {'mean of the last 10 rounds' if summary == 'last10' else 'last round'}; "
          "global = global model on the balanced test set, personal = mean over clients on their test splits")
    print(table.to_string())
    return table


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The options every command shares: ``--config``, ``--set``, ``--quiet``, ``--debug``."""
    p = argparse.ArgumentParser(prog=f"python -m fedpurel_lite {prog}", description=doc)
    p.add_argument("--config", default="configs/embedded.toml", help="TOML preset (one table per section)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides: section.key=value or a unique bare key (lr=0.02, world.folder.root=/data)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def load_config(args: argparse.Namespace) -> RunConfig:
    """The config of ``--config`` with the ``--set`` overrides, checked (no work done yet).

    The file is first read through :func:`fedpurel_lite.data.safe_load.load_toml` (size, nesting and
    UTF-8 bounded), so no preset can end in a parser's ``RecursionError``.
    """
    from ..data.safe_load import load_toml

    if not Path(args.config).is_file():
        raise ConfigError(f"--config {args.config!r}: file not found")
    load_toml(args.config, "config file", error=ConfigError)
    return RunConfig.load(args.config).with_overrides(args.set)


def _resource_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ignore-resources", action="store_true",
                   help="start even when the estimated disk or memory exceeds what is free")


def _check_methods(names: Sequence[str]) -> None:
    from ..methods import get_method

    for name in names:
        get_method(name)


def run_main(argv: Sequence[str]) -> int:
    """``run --config FILE [--set k=v ...] [--out DIR] [--resume [--resume-round N]] [--overwrite]``.

    Before any work: the config, the output folder (not a file, nothing in the way of its files,
    not locked by another command, not holding another run), the machine (:func:`preflight`) and
    the resources (:func:`~fedpurel_lite.engine.preflight.bound_resources`). The folder is then locked
    (:mod:`fedpurel_lite.engine.outlock`) until the result is written.
    """
    p = parser("run", "one federated run")
    p.add_argument("--out", default=None, help="output folder (default runs/<method>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--resume-round", type=int, default=None, metavar="N",
                   help="with --resume: continue from completed round N (after a damaged newest round)")
    p.add_argument("--overwrite", action="store_true", help="replace a different run's output folder")
    _resource_options(p)
    args = p.parse_args(argv)
    if args.resume_round is not None and not args.resume:
        raise ConfigError("--resume-round needs --resume")
    if args.resume_round is not None and args.resume_round < 0:
        raise ConfigError(f"--resume-round {args.resume_round}: allowed a completed round, >= 0")
    config = load_config(args)
    from ..engine.assembly import with_method
    from ..engine.checkpoint import check_output_dir
    from ..engine.outlock import check_unlocked, output_lock
    from ..engine.preflight import check_folder_destination, preflight
    from ..engine.resources import bound_resources
    from ..engine.results import ANALYSIS, FINAL_STATE, RESULT_JSON

    effective, method = with_method(config)
    out = Path(args.out or f"runs/{method.name}-seed{config.run.seed}")
    check_folder_destination(out, "--out", files=(RESULT_JSON, FINAL_STATE, ANALYSIS), folders=("checkpoint",))
    check_unlocked(out)
    check_output_dir(out, effective.to_dict(), method.name, args.resume, args.overwrite)
    preflight(effective, outputs=[("--out", out)])
    if args.resume:
        from ..engine.checkpoint import check_resumable, find_resume_point

        check_resumable(find_resume_point(out / "checkpoint", args.resume_round), effective.to_dict(), method.name)
    config = bound_resources(config, [out], ignore=args.ignore_resources)
    from ..engine.simulate import run

    with output_lock(out, "--out", f"run {method.name}"):
        check_output_dir(out, effective.to_dict(), method.name, args.resume, args.overwrite)  # now under the lock
        result = run(config, progress=not args.quiet, checkpoint_dir=out / "checkpoint", resume=args.resume,
                     resume_round=args.resume_round)
        print_results({result.method: result})
        print(f"wrote {result.save(out)}")
    return 0


def compare_main(argv: Sequence[str]) -> int:
    """``compare --config FILE [--methods m1 m2 ...] [--set k=v ...] [--csv FILE] [--report DIR]``.

    ``--report DIR`` (off by default) also saves every method's run folder under ``DIR/runs/<method>``
    and writes the bias-transfer report of them, ``DIR/report.html`` with its figures
    (:mod:`fedpurel_lite.views.report`; ``python -m fedpurel_lite report DIR/runs/*`` rewrites it).
    """
    p = parser("compare", "several methods on one federation")
    p.add_argument("--methods", nargs="*", default=list(DEFAULT_COMPARE), help="method names")
    p.add_argument("--csv", default=None, help="also write the table as CSV")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also save the runs under DIR/runs/ and write their bias-transfer report DIR/report.html")
    _resource_options(p)
    args = p.parse_args(argv)
    config = load_config(args)
    if not args.methods:
        raise ConfigError("--methods: name at least one method")
    _check_methods(args.methods)
    from ..engine.outlock import check_unlocked, output_lock
    from ..engine.preflight import check_file_destination, check_folder_destination, preflight
    from ..engine.resources import bound_resources
    from ..views.report import REPORT_HTML

    outputs = []
    if args.csv:
        check_file_destination(args.csv, "--csv")
        outputs.append(("--csv", Path(args.csv).parent))  # created by preflight when missing
    if args.report:
        report = Path(args.report)
        check_folder_destination(report, "--report", files=(REPORT_HTML,), folders=("runs",))
        for name in args.methods:
            check_folder_destination(report / "runs" / name, "--report")
        check_unlocked(report, "--report")
        outputs.append(("--report", report))
    for name in args.methods:
        preflight(config.with_overrides({"method.name": name}), outputs=outputs)
    config = bound_resources(config, [Path(args.report)] if args.report else [], ignore=args.ignore_resources,
                             runs=len(args.methods), checkpoints=False)
    from contextlib import nullcontext

    from ..engine.simulate import compare

    with output_lock(args.report, "--report", "compare") if args.report else nullcontext():
        frame = compare(config, args.methods, progress=not args.quiet)
        results = frame.attrs["results"]
        table = print_results(results)
        if args.csv:
            table.to_csv(args.csv)
        if args.report:
            from ..views.report import views_of, write_report

            sources = {name: str(res.save(Path(args.report) / "runs" / name)) for name, res in results.items()}
            print(f"wrote {write_report(views_of(results, sources), args.report)}")
    return 0


def features_main(argv: Sequence[str]) -> int:
    """``features --config FILE``: build (or verify and reuse) the feature cache of the config's world."""
    p = parser("features", "build or verify a feature cache")
    _resource_options(p)
    args = p.parse_args(argv)
    config = load_config(args)
    from ..engine.assembly import load_bank
    from ..engine.preflight import preflight
    from ..engine.resources import bound_resources

    preflight(config)
    config = bound_resources(config, ignore=args.ignore_resources, runs=0, checkpoints=False)
    bank = load_bank(config, progress=not args.quiet)
    print(f"features: train {tuple(bank.train_features.shape)}, test {tuple(bank.test_features.shape)}, "
          f"classes {len(bank.class_names)}, logit scale {float(bank.logit_scale):.2f}")
    return 0
