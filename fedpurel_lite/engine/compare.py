"""Several methods on one federation, tabulated: :func:`compare`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..config import RunConfig
from ..methods import get_method
from .assembly import assemble

if TYPE_CHECKING:
    import pandas as pd


def compare(
    config: RunConfig,
    methods: Sequence[str],
    bank: Any = None,
    backbone: Any = None,
    progress: bool = True,
    last: str = "last10",
) -> pd.DataFrame:
    """Run several methods on the same federation and tabulate them.

    Parameters
    ----------
    config : RunConfig
        Shared protocol (``method.name`` is replaced by each entry of ``methods``).
    methods : sequence of str
        Registered method names.
    bank, backbone : optional
        As in :func:`~fedpurel_lite.engine.simulate.run`; loaded once and shared.
    progress : bool
        tqdm bars.
    last : {"last10", "last"}
        Which summary to tabulate.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``gm_*`` (global model, balanced test set), ``gm_clients_*`` and
        ``pm_*`` (client splits, means over clients), ``time_s``; the :class:`RunResult` objects
        are in ``df.attrs["results"]``.
    """
    import pandas as pd

    from .simulate import run

    for name in methods:
        get_method(name)
    parts = assemble(config, bank, backbone, progress=progress)
    rows, results = [], {}
    for name in methods:
        cfg = config.with_overrides({"method.name": name})
        res = run(cfg, parts.bank, parts.backbone, progress=progress, federation=parts.federation)
        results[name] = res
        row: dict[str, Any] = {"method": name}
        for part in ("gm", "gm_clients", "pm"):
            row.update({f"{part}_{k}": v for k, v in res.summary[last][part].items()})
        row["time_s"] = sum(h["time_s"] for h in res.history)
        rows.append(row)
    df = pd.DataFrame(rows).set_index("method")
    df.attrs["results"] = results
    return df
