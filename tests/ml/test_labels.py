"""Labels: hand-worked examples, and labels use only bars after their own row."""

from __future__ import annotations

import numpy as np
import pytest

from liu.ml.labels import crosses_within, make_labels
from liu.ml.spec import LabelSpec

CLOSE = np.array([100.0, 101.0, 100.0, 99.0, 102.0, 102.0])


def test_forward_return_three_classes_by_hand() -> None:
    # 1-bar returns: +1%, -0.99%, -1%, +3.03%, 0%, (none)
    lab = make_labels(LabelSpec(horizon=1, up=0.005, down=-0.005, classes=3), {"close": CLOSE})
    assert np.array_equal(lab, [1, -1, -1, 1, 0, np.nan], equal_nan=True)


def test_forward_return_binary_and_value_by_hand() -> None:
    lab = make_labels(LabelSpec(horizon=2, up=0.0, classes=2), {"close": CLOSE})
    # 2-bar returns: 100->100 (0), 101->99 (<0), 100->102 (>0), 99->102 (>0), none, none
    assert np.array_equal(lab, [0, 0, 1, 1, np.nan, np.nan], equal_nan=True)
    val = make_labels(LabelSpec(horizon=2, classes=0), {"close": CLOSE})
    assert val[2] == pytest.approx(0.02) and np.isnan(val[-2:]).all()


def test_cross_within_horizon_by_hand() -> None:
    fast = np.array([1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0])
    slow = np.full(7, 2.5)
    # fast crosses above slow at bar 2 (2.0 -> 3.0) and bar 6 (2.0 -> 3.0)
    up = crosses_within(fast, slow, horizon=2)
    assert np.array_equal(up, [1, 1, 0, 0, 1, np.nan, np.nan], equal_nan=True)
    down = crosses_within(fast, slow, horizon=2, above=False)  # crosses below at bar 3 (3.0 -> 2.0)
    assert np.array_equal(down, [0, 1, 1, 0, 0, np.nan, np.nan], equal_nan=True)
    # an undefined (warm-up) value inside the window leaves the row unlabelled
    fast[1] = np.nan
    assert np.isnan(crosses_within(fast, slow, horizon=2)[:2]).all()


@pytest.mark.parametrize(
    ("label", "rising", "falling"),
    [
        (LabelSpec(horizon=5, up=0.001, down=-0.001, classes=3), 1, -1),
        (LabelSpec(horizon=3, classes=0), pytest.approx(0.1), pytest.approx(-0.1)),
        (LabelSpec(kind="cross", horizon=4, fast="close", slow="open", classes=2), 1, 0),
    ],
)
def test_labels_use_only_the_next_horizon_bars(label: LabelSpec, rising, falling) -> None:
    rng = np.random.default_rng(2)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, 300)))
    open_ = np.concatenate([[100.0], close[:-1]])
    base = make_labels(label, {"close": close, "open": open_})
    h = label.horizon
    assert np.isnan(base[-h:]).all() and not np.isnan(base[:-h]).any()
    t = 150
    far = {"close": close.copy(), "open": open_.copy()}
    far["close"][t + h + 1 :] *= 1.5  # beyond row t's window: rows <= t keep their labels
    far["open"][t + h + 1 :] *= 0.5
    assert np.array_equal(make_labels(label, far)[: t + 1], base[: t + 1])
    past = {"close": close.copy(), "open": open_.copy()}
    past["close"][: t - 1] *= 1.5  # the past of row t does not matter either
    past["open"][: t - 1] *= 0.5
    assert np.array_equal(make_labels(label, past)[t:], base[t:], equal_nan=True)
    # Inside the window the label follows the bars: two futures for row t, each with a known label.
    # Rising: close dips below open at t+1 and ends 10% up, above open (a cross above at t+2).
    # Falling: close stays 10% down, below open, for the whole window (no cross above).
    up, down = {"close": close.copy(), "open": open_.copy()}, {"close": close.copy(), "open": open_.copy()}
    window = slice(t + 1, t + h + 1)
    up["open"][window] = down["open"][window] = close[t]
    up["close"][window] = close[t] * 1.1
    up["close"][t + 1] = close[t] * 0.9
    down["close"][window] = close[t] * 0.9
    assert make_labels(label, up)[t] == rising
    assert make_labels(label, down)[t] == falling
