"""Per-client measures drawn by the series' bias-transfer figures.

The head lean of a client's predictions is :func:`fedpurel_lite.engine.metrics.local_head_lean`; the
rebuilt final models of a run are in :mod:`fedpurel_lite.engine.assembly`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def client_group_accuracy(groups: np.ndarray, y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray],
                          group: int = 2) -> np.ndarray:
    """Each client's accuracy (percent) on the test samples of one class group (2 = tail).

    Parameters
    ----------
    groups : numpy.ndarray
        Group per class id (0 head, 1 medium, 2 tail).
    y_true, y_pred : sequence of numpy.ndarray
        Each client's test labels and predictions.
    group : int
        Which group.

    Returns
    -------
    numpy.ndarray
        One value per client; NaN for a client without test samples of the group.
    """
    groups = np.asarray(groups)
    out = []
    for yt, yp in zip(y_true, y_pred, strict=True):
        yt, yp = np.asarray(yt), np.asarray(yp)
        inside = groups[yt] == group
        out.append(100.0 * float(np.mean(yp[inside] == yt[inside])) if inside.any() else np.nan)
    return np.asarray(out, dtype=float)
