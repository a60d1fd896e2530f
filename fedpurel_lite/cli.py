"""The ``run``, ``compare`` and ``features`` commands of ``python -m fedpurel_lite``.

``run`` writes ``result.json`` + ``final_state.safetensors`` into its output folder and prints the
results table: method × model (global on the balanced test set / personal on the client splits) ×
overall / head / medium / tail. Every input is validated before any work starts.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .config import RunConfig
from .methods import get_method

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


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m fedpurel_lite {prog}", description=doc)
    parser.add_argument("--config", default="configs/embedded.toml", help="TOML preset")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _load(args: argparse.Namespace) -> RunConfig:
    if not Path(args.config).is_file():
        raise SystemExit(f"error: config file {args.config!r} not found")
    try:
        return RunConfig.load(args.config).with_overrides(args.set)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def run_main(argv: Sequence[str]) -> int:
    """``run --config FILE [--set k=v ...] [--out DIR] [--resume]``."""
    from .simulate import run

    parser = _parser("run", "one federated run")
    parser.add_argument("--out", default=None, help="output folder (default runs/<method>-seed<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    args = parser.parse_args(argv)
    config = _load(args)
    try:
        get_method(config.method)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    out = Path(args.out or f"runs/{config.method}-seed{config.seed}")
    result = run(config, progress=not args.quiet, checkpoint_dir=out / "checkpoint", resume=args.resume)
    print_results({result.method: result})
    print(f"wrote {result.save(out)}")
    return 0


def compare_main(argv: Sequence[str]) -> int:
    """``compare --config FILE [--methods m1 m2 ...] [--set k=v ...] [--csv FILE]``."""
    from .simulate import compare

    parser = _parser("compare", "several methods on one federation")
    parser.add_argument("--methods", nargs="*", default=list(DEFAULT_COMPARE), help="method names")
    parser.add_argument("--csv", default=None, help="also write the table as CSV")
    args = parser.parse_args(argv)
    config = _load(args)
    try:
        for name in args.methods:
            get_method(name)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    frame = compare(config, args.methods, progress=not args.quiet)
    table = print_results(frame.attrs["results"])
    if args.csv:
        table.to_csv(args.csv)
    return 0


def features_main(argv: Sequence[str]) -> int:
    """``features --config FILE``: build (or verify and reuse) the feature cache of the config's world."""
    from .simulate import load_bank_for

    args = _parser("features", "build or verify a feature cache").parse_args(argv)
    config = _load(args)
    bank = load_bank_for(config)
    print(f"features: train {tuple(bank.train_features.shape)}, test {tuple(bank.test_features.shape)}, "
          f"classes {len(bank.class_names)}, logit scale {float(bank.logit_scale):.2f}")
    return 0
