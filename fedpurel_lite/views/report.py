"""The bias-transfer report: the measures of :mod:`fedpurel_lite.engine.metrics` and their figures, for any runs.

``python -m fedpurel_lite report RUN_DIR [RUN_DIR ...] [--out DIR]`` reads run folders (written by
``run``, or by ``compare --report``) and writes ``report.html``, one self-contained page with its
PNG figures embedded (``data:`` URIs; the file can be moved or mailed alone): convergence, the
erosion map, group bars, calibration by group, the bias-transfer grid, per-client head lean and
purification telemetry, every run on the same page. The page embeds no date or machine detail, and
the figures are drawn with fixed metadata, so the same runs give the same bytes. Every input and
the output folder are checked before anything is drawn, and the folder is locked while it is
written (:mod:`fedpurel_lite.engine.outlock`).

Everything is measured on the last round: the global model on the balanced test set
(``test``), and zero-shot, the global model and the personal models on the client test splits
(``clients``), from the arrays a simulated run records (``RunResult.analysis``). A result without
them (an older folder, a Flower run) still gets its curves and the measures of its recorded
per-class accuracies.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.longtail import GROUP_NAMES
from ..engine import metrics
from ..engine.results import RunResult, atomic_write
from ..errors import ConfigError, IntegrityError, UserError

REPORT_HTML = "report.html"
_STYLES = ("-", "--", ":", "-.")


@dataclass
class RunView:
    """One run as the report sees it.

    Attributes
    ----------
    label : str
        Its name on the page (the method, with the folder name when two runs share a method).
    source : str
        Where it was read from.
    result : RunResult
    style : str
        Line style (the n-th run of the same method gets the n-th style).
    local_mass : float
        A client's own head is its fewest most frequent classes holding this share of its training
        images (the bias-transfer grid and the head lean).
    arrays : dict of numpy.ndarray
        ``result.analysis`` as NumPy arrays (empty when not recorded).
    measures : dict
        :func:`run_measures` of the run.
    """

    label: str
    source: str
    result: RunResult
    style: str = "-"
    local_mass: float = 0.5
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    measures: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.result.method

    @property
    def is_zero_shot(self) -> bool:
        """A run whose global model predicts exactly as the zero-shot reference (the figures draw it once)."""
        return bool(self.arrays) and np.array_equal(self.arrays["gm_pred"], self.arrays["zs_pred"]) \
            and np.array_equal(self.arrays["pm_pred"], self.arrays["zs_pred"][self.arrays["client_test_index"]])

    @property
    def groups(self) -> np.ndarray:
        return np.asarray(self.result.federation["groups"], dtype=np.int64)

    @property
    def train_counts(self) -> np.ndarray:
        return np.asarray(self.result.federation["train_counts"], dtype=np.int64)

    def per_client(self, flat: np.ndarray) -> list[np.ndarray]:
        """Split an array over the concatenated client test splits into one array per client."""
        off = self.arrays["client_test_offsets"]
        return [flat[off[k]:off[k + 1]] for k in range(len(off) - 1)]


def _model_block(per_class: np.ndarray, reference: np.ndarray | None, counts: np.ndarray, groups: np.ndarray,
                 group_acc: Mapping[str, float]) -> dict[str, Any]:
    change = metrics.accuracy_change(per_class, reference) if reference is not None else np.full(len(per_class), np.nan)
    return {"per_class": per_class, "change": change, "erosion_rho": metrics.spearman_change_logcount(change, counts),
            "spread": metrics.per_class_spread(per_class, groups), "groups": dict(group_acc)}


def _group_acc(block: Mapping[str, Any]) -> dict[str, float]:
    return {k: float("nan") if block.get(k) is None else float(block[k]) for k in ("accuracy", *GROUP_NAMES)}


def run_measures(view: RunView) -> dict[str, Any]:
    """Every measure of one run's last round.

    Returns
    -------
    dict
        ``test``: ``{"zero-shot", "global"}`` on the balanced test set; ``clients``:
        ``{"zero-shot", "global", "personal"}`` on the client test splits (pooled per-class
        accuracy, client-mean group accuracy). Each block holds ``per_class``, ``change`` (vs
        zero-shot), ``erosion_rho``, ``spread`` (:func:`~fedpurel_lite.engine.metrics.per_class_spread`),
        ``groups``, and with recorded arrays ``ece`` (by group), ``reliability`` and, on the client
        splits, ``grid`` (bias-transfer grid) and ``lean`` (per-client head lean). ``purification``:
        :func:`~fedpurel_lite.engine.metrics.purification_per_round`.
    """
    res, groups, counts = view.result, view.groups, view.train_counts
    last = res.history[-1] if res.history else None
    out: dict[str, Any] = {"test": {}, "clients": {}, "purification": metrics.purification_per_round(res.history)}
    a = view.arrays
    num_classes = len(counts)
    if last is not None:
        gm_pc = np.asarray([np.nan if x is None else x for x in last["gm"]["per_class"]], dtype=float)
        pm_pc = np.asarray([np.nan if x is None else x for x in last["pm"]["pooled"]["per_class"]], dtype=float)
        zs_test = a["zs_per_class"] if a else None
        out["test"]["global"] = _model_block(gm_pc, zs_test, counts, groups, _group_acc(last["gm"]))
        if not a:
            out["clients"]["personal"] = _model_block(pm_pc, None, counts, groups, _group_acc(last["pm"]))
    if not a:
        return out
    labels, index = a["test_labels"], a["client_test_index"]
    truths = view.per_client(labels[index])
    models = {"zero-shot": (a["zs_pred"][index], a["zs_confidence"][index], a["zs_correct"][index]),
              "global": (a["gm_pred"][index], a["gm_confidence"][index], a["gm_correct"][index]),
              "personal": (a["pm_pred"], a["pm_confidence"], a["pm_correct"])}
    zs_clients = metrics.per_class_accuracy(labels[index], a["zs_pred"][index], num_classes) * 100.0
    for name, (pred, conf, correct) in models.items():
        per = metrics.evaluate_clients(view.per_client(pred), truths, num_classes, groups)
        pooled = metrics.per_class_accuracy(labels[index], pred, num_classes) * 100.0
        block = _model_block(pooled, None if name == "zero-shot" else zs_clients, counts, groups, _group_acc(per))
        block["ece"] = metrics.calibration_by_group(conf, correct, labels[index], groups)
        block["reliability"] = metrics.reliability_bins(conf, correct)
        block["grid"] = metrics.bias_transfer_grid(a["client_counts"], groups, truths, view.per_client(pred),
                                                   view.local_mass)
        block["lean"] = metrics.local_head_lean(a["client_counts"], truths, view.per_client(pred), view.local_mass)
        out["clients"][name] = block
    zs_pc = a["zs_per_class"]
    test_zs = {**metrics.group_means(zs_pc, groups), "accuracy": float(a["zs_correct"].mean() * 100.0)}
    out["test"]["zero-shot"] = _model_block(zs_pc, None, counts, groups, test_zs)
    for name, prefix in (("zero-shot", "zs"), ("global", "gm")):
        conf, correct = a[f"{prefix}_confidence"], a[f"{prefix}_correct"]
        out["test"][name]["ece"] = metrics.calibration_by_group(conf, correct, labels, groups)
        out["test"][name]["reliability"] = metrics.reliability_bins(conf, correct)
    return out


def views_of(results: Mapping[str, RunResult], sources: Mapping[str, str] | None = None,
             local_mass: float = 0.5) -> list[RunView]:
    """Report views of named results (line styles per repeated method, measures computed).

    Parameters
    ----------
    results : mapping of label to RunResult
    sources : mapping of label to str, optional
        Where each run was read from (shown on the page).
    local_mass : float
        Share of a client's training images its own head holds (see :class:`RunView`).
    """
    if not 0 < local_mass <= 1:
        raise ConfigError(f"--local-mass {local_mass!r}: allowed a share in (0, 1]")
    views, seen = [], {}
    for name, res in results.items():
        n = seen.get(res.method, 0)
        seen[res.method] = n + 1
        arrays = {k: v.numpy() for k, v in res.analysis.items()}
        view = RunView(name, (sources or {}).get(name, name), res, _STYLES[n % len(_STYLES)], local_mass, arrays)
        view.measures = run_measures(view)
        views.append(view)
    return views


def load_runs(run_dirs: Sequence[str | Path]) -> dict[str, RunResult]:
    """Results of run folders keyed by a unique label (the method; ``method [folder]`` for repeats)."""
    loaded = [(Path(d), RunResult.load(d)) for d in run_dirs]
    methods = [r.method for _, r in loaded]
    out: dict[str, RunResult] = {}
    for path, res in loaded:
        label = res.method if methods.count(res.method) == 1 else f"{res.method} [{path.name}]"
        while label in out:
            label += "'"
        out[label] = res
    return out


# ----------------------------------------------------------------------------- the page
def _fmt(value: Any, digits: int = 1) -> str:
    """A table cell: integers as they are, other numbers to ``digits`` decimals (``—`` if not finite), text escaped."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}" if np.isfinite(value) else "—"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c, digits)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _model_rows(views: Sequence[RunView], where: str, models: Sequence[str], cells: Any,
                need: str = "groups") -> list[list[Any]]:
    """One row per (run, model) whose block has ``need``; zero-shot only where it differs from an earlier run's."""
    rows, shown_zs = [], []
    for v in views:
        for model in models:
            m = v.measures[where].get(model)
            if m is None or need not in m:
                continue
            if model == "zero-shot":
                key = v.arrays["zs_pred"].tobytes() + v.arrays["client_test_index"].tobytes()
                if key in shown_zs:
                    continue
                shown_zs.append(key)
            rows.append(["zero-shot" if model == "zero-shot" else v.label, model, *cells(m)])
    return rows


def _spread_cells(m: Mapping[str, Any]) -> list[Any]:
    s = m["spread"]
    return [m["groups"]["accuracy"], *(m["groups"][g] for g in GROUP_NAMES), s["worst_class"], s["harmonic_mean"],
            s["geometric_mean"], s["head_tail_gap"], s["per_class_std"],
            f"{m['erosion_rho']:+.2f}" if np.isfinite(m["erosion_rho"]) else "—"]


def _ece_cells(m: Mapping[str, Any]) -> list[Any]:
    return [m["ece"][k] for k in ("overall", *GROUP_NAMES)]


def page_sections(views: Sequence[RunView]) -> list[tuple[str, str]]:
    """(heading, HTML) of the report's tables."""
    spread_head = ["run", "model", "overall", *GROUP_NAMES, "worst class", "harmonic mean", "geometric mean",
                   "head−tail gap", "per-class std", "ρ(Δ vs zero-shot, log n)"]
    runs = [[v.label, v.method, v.source, len(v.result.history), v.result.config.get("run", {}).get("seed", "—"),
             "yes" if v.arrays else "no"] for v in views]
    out = [("Runs", _table(["run", "method", "source", "rounds", "seed", "analysis arrays"], runs))]
    out.append(("Accuracy and its spread over classes, balanced test set",
                _table(spread_head, _model_rows(views, "test", ("zero-shot", "global"), _spread_cells))))
    out.append(("Accuracy and its spread over classes, client test splits",
                _table(spread_head, _model_rows(views, "clients", ("zero-shot", "global", "personal"),
                                                _spread_cells))))
    ece_head = ["run", "model", "ECE overall", *(f"ECE {g}" for g in GROUP_NAMES)]
    ece = _model_rows(views, "test", ("zero-shot", "global"), _ece_cells, "ece")
    ece += [[r[0], f"{r[1]} (client splits)", *r[2:]] for r in _model_rows(views, "clients", ("personal",),
                                                                             _ece_cells, "ece")]
    out.append(("Expected calibration error by true-class group (points)", _table(ece_head, ece)))
    cells = [f"{r} / {c}" for r in metrics.GRID_ROWS for c in metrics.GRID_COLUMNS]
    grid = _model_rows(views, "clients", ("zero-shot", "global", "personal"),
                       lambda m: [*np.ravel(m["grid"]["accuracy"]), *np.ravel(m["grid"]["samples"])], "grid")
    out.append(("Bias-transfer grid: accuracy on the client splits (%), and samples per cell",
                _table(["run", "model", *cells, *(f"n {c}" for c in cells)], grid)))
    lean = _model_rows(views, "clients", ("zero-shot", "global", "personal"),
                       lambda m: [np.mean(m["lean"]), np.min(m["lean"]), np.max(m["lean"])], "lean")
    out.append(("Head lean over clients (points)", _table(["run", "model", "mean", "min", "max"], lean)))
    pur = [[v.label, float(v.measures["purification"]["total_projected_share"]),
            float(v.measures["purification"]["total_mean_cos"])]
           for v in views if v.measures["purification"]["decisions"].sum() > 0]
    if pur:
        out.append(("Purification over the run", _table(["run", "projected share", "mean cos"], pur, digits=3)))
    return out


_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}"
        "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}"
        "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}figcaption{font-size:13px;color:#555}")


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes at the report's DPI, without the ``Software`` stamp (same figure, same bytes)."""
    from .report_figures import DPI

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def write_report(results: Mapping[str, RunResult] | Sequence[RunView], out_dir: str | Path,
                 title: str = "Bias-transfer report") -> Path:
    """Write ``report.html``, one self-contained page with its figures embedded, into ``out_dir``; return its path.

    Parameters
    ----------
    results : mapping of label to RunResult, or sequence of RunView
        The runs to compare on one page.
    out_dir : path
        Target folder (created).
    title : str
        Page title.
    """
    from .report_figures import FIGURES

    views = list(results) if not isinstance(results, Mapping) else views_of(results)
    if not views:
        raise ValueError("write_report needs at least one run")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>Last round of every run. Accuracy in %; zero-shot is CLIP with the world's class prompts; "
             "client splits are each client's test split (personal models there; the global model for a method "
             f"without a personal stage). A client's own head (L): its fewest most frequent classes holding "
             f"{views[0].local_mass:.0%} of its training images; global head and tail (G): the run's groups.</p>"]
    for heading, body in page_sections(views):
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("<h2>Figures</h2>")
    for name, (draw, caption) in FIGURES.items():
        png = png_bytes(draw(views))
        parts.append(f"<figure><img src='data:image/png;base64,{base64.b64encode(png).decode()}' "
                     f"alt='{html.escape(caption)}' title='{html.escape(name)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    page = out / REPORT_HTML
    atomic_write(page, "\n".join(parts).encode())
    return page


def main(argv: Sequence[str]) -> int:
    """``report RUN_DIR [RUN_DIR ...] [--out DIR] [--title TEXT] [--local-mass SHARE]``."""
    p = argparse.ArgumentParser(prog="python -m fedpurel_lite report",
                                description="bias-transfer report (one self-contained HTML page) of run folders")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by `run` (result.json inside)")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--title", default="Bias-transfer report", help="page title")
    p.add_argument("--local-mass", type=float, default=0.5, metavar="SHARE",
                   help="a client's own head holds this share of its training images (default 0.5)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    from ..engine.outlock import check_unlocked, output_lock
    from ..engine.preflight import check_folder_destination

    if not 0 < args.local_mass <= 1:
        raise ConfigError(f"--local-mass {args.local_mass!r}: allowed a share in (0, 1]")
    try:
        args.title.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"--title {args.title!r}: not writable as UTF-8 text") from None
    check_folder_destination(args.out, "--out", files=(REPORT_HTML,))
    check_unlocked(args.out)
    results = load_runs(args.runs)
    try:
        views = views_of(results, dict(zip(results, args.runs, strict=True)), args.local_mass)
    except UserError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:  # a result.json edited into another shape
        raise IntegrityError(f"the runs {', '.join(map(str, args.runs))}: a result.json does not hold what a run "
                             f"writes ({type(exc).__name__}: {exc})") from None
    with output_lock(args.out, "--out", "report"):
        page = write_report(views, args.out, args.title)
    print(f"wrote {page}")
    return 0
