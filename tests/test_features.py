import numpy as np
import pytest
import talib

from liu.errors import ConfigError
from liu.features import BarHistory, Features
from liu.testing import make_bars


@pytest.mark.parametrize(
    ("name", "params"),
    [("SMA", {"timeperiod": 10}), ("RSI", {"timeperiod": 14}), ("ATR", {"timeperiod": 14}), ("MACD", {})],
)
def test_streaming_indicator_equals_batch_talib_bar_by_bar(name, params):
    bars = make_bars("X", 300, seed=4)
    f = Features()
    f.indicator("X", name, **params)  # registered before any bar: opens once the lookback is there
    values = []
    for b in bars:
        f.add_bar("X", *b[2:8])
        values.append(f.indicator("X", name, **params).value)
    h = f.bars("X")
    fn = getattr(talib, name)
    inputs = {"ATR": (h.high, h.low, h.close)}.get(name, (h.close,))
    batch = fn(*inputs, **params)
    batch = batch[0] if isinstance(batch, tuple) else batch
    got = [v[0] if isinstance(v, tuple) else v for v in values]
    got = np.array([np.nan if v is None else v for v in got])
    np.testing.assert_array_equal(got, batch)  # bit-identical, NaN while warming up


def test_indicator_requested_late_opens_on_stored_history():
    bars = make_bars("X", 50)
    f = Features()
    for b in bars:
        f.add_bar("X", *b[2:8])
    assert f.indicator("X", "sma", timeperiod=5).value == talib.SMA(f.bars("X").close, 5)[-1]


def test_unknown_indicator_is_a_clear_error():
    with pytest.raises(ConfigError, match="'NOPE': not a TA-Lib function"):
        Features().indicator("X", "NOPE")


def test_bounded_history_keeps_the_newest_bars_in_order_and_its_memory_stops_growing() -> None:
    h = BarHistory(keep=1000)
    sizes = set()
    for i in range(20_000):
        h.append(i, i + 0.1, i + 0.2, i - 0.1, i + 0.05, 1.0)
        if i % 997 == 0:
            sizes.add(h._data.shape[1])
    ts = h.ts
    assert ts[-1] == 19_999 and np.all(np.diff(ts) == 1)  # the newest, contiguous, oldest first
    assert 750 <= len(h) <= 1000 + BarHistory._BLOCK
    assert np.allclose(h.close, ts + 0.05)  # every column moved with its bar
    assert max(sizes) <= 2048  # the arrays stopped growing
    assert len(BarHistory().ts) == 0 and BarHistory().keep is None  # unbounded unless asked
