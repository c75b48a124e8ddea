"""Labels: what the model learns to predict, computed only from bars AFTER each row's bar.

Row t's label looks at bars t+1 .. t+horizon; the last `horizon` rows have no label (NaN), so a model never
trains on an outcome the data does not hold yet.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from liu.ml.spec import LabelSpec

NAN = float("nan")


def forward_return(x: np.ndarray, horizon: int) -> np.ndarray:
    """x[t + horizon] / x[t] - 1, NaN for the last `horizon` rows."""
    out = np.full(len(x), NAN)
    if len(x) > horizon:
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:-horizon] = x[horizon:] / x[:-horizon] - 1.0
    return out


def crosses_within(fast: np.ndarray, slow: np.ndarray, horizon: int, above: bool = True) -> np.ndarray:
    """1.0 if `fast` crosses `slow` (upwards when `above`) at some bar in t+1 .. t+horizon, else 0.0.

    A cross at bar k means fast <= slow at k-1 and fast > slow at k (mirrored for below). NaN where the
    window runs past the data or touches undefined (warm-up) values.
    """
    n = len(fast)
    d = fast - slow if above else slow - fast
    with np.errstate(invalid="ignore"):
        cross = np.zeros(n)
        cross[1:] = (d[:-1] <= 0) & (d[1:] > 0)
    undefined = np.zeros(n, dtype=bool)
    undefined[1:] = np.isnan(d[:-1]) | np.isnan(d[1:])
    undefined[0] = True
    out = np.full(n, NAN)
    if n > horizon:
        # window t covers bars t+1 .. t+horizon
        hit = sliding_window_view(cross[1:], horizon).any(axis=1)
        bad = sliding_window_view(undefined[1:], horizon).any(axis=1)
        out[: n - horizon] = np.where(bad, NAN, hit.astype(float))
    return out


def make_labels(label: LabelSpec, values: dict[str, np.ndarray]) -> np.ndarray:
    """Label per row (float; NaN = no label) from the pipeline's named arrays (`batch_named`).

    classes=3: -1 (return < down), 0, 1 (return > up). classes=2: 1 if return > up else 0.
    classes=0: the forward return itself (regression). kind='cross': 1/0 (crossed within horizon).
    """
    if label.kind == "cross":
        return crosses_within(
            values[label.fast], values[label.slow], label.horizon, label.direction == "above"
        )
    r = forward_return(values[label.column], label.horizon)
    if label.classes == 0:
        return r
    out = np.full(len(r), NAN)
    ok = ~np.isnan(r)
    if label.classes == 2:
        out[ok] = (r[ok] > label.up).astype(float)
    else:
        out[ok] = np.where(r[ok] > label.up, 1.0, np.where(r[ok] < label.down, -1.0, 0.0))
    return out
