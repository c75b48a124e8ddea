"""Per-symbol bar history and streaming TA-Lib indicators.

History is kept in growing numpy arrays (about 48 bytes per bar, not one
Python object per bar). Indicators are `talib.stream` objects, which give
bit-identical results to the batch TA-Lib functions; they need their full
lookback as history before they open, so each indicator waits for enough
bars and then opens on the stored history.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import talib
import talib.stream as tstream
from talib import abstract

from liu.errors import ConfigError

COLUMNS = ("ts", "open", "high", "low", "close", "volume")


class BarHistory:
    """Append-only OHLCV arrays for one symbol; `close` etc. are views of the filled part.

    Appends go to a short list first and are copied into the arrays in blocks
    (when a column is read, or every `_BLOCK` bars): one numpy call per block
    instead of six scalar writes per bar, and still no Python object per stored bar.
    """

    __slots__ = ("_data", "_filled", "_pending", "_views", "keep")
    _BLOCK = 256

    def __init__(self, capacity: int = 256, keep: int | None = None) -> None:
        self.keep = keep  # at most this many bars (the oldest go; a daemon's memory must not grow)
        self._data = np.empty((6, capacity), dtype=np.float64)
        self._filled = 0  # bars copied into _data
        self._pending: list[tuple] = []
        self._views: dict[str, np.ndarray] = {}  # valid until the next flush

    @property
    def n(self) -> int:
        return self._filled + len(self._pending)

    def append(self, ts: int, o: float, h: float, lo: float, c: float, v: float) -> None:
        pending = self._pending
        pending.append((ts, o, h, lo, c, v))
        if len(pending) >= self._BLOCK:
            self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        n, k = self._filled, len(pending)
        keep = self.keep
        if keep is not None and n + k > keep:  # drop a quarter more than needed: this runs every keep/4 bars
            drop = min(n, n + k - keep + keep // 4)
            self._data[:, : n - drop] = self._data[:, drop:n]
            n -= drop
        if n + k > self._data.shape[1]:
            grown = np.empty((6, max(2 * self._data.shape[1], n + k)), dtype=np.float64)
            grown[:, :n] = self._data[:, :n]
            self._data = grown
        block = np.fromiter(chain.from_iterable(pending), np.float64, count=6 * k)
        self._data[:, n : n + k] = block.reshape(k, 6).T
        self._filled = n + k
        pending.clear()
        self._views.clear()

    def __len__(self) -> int:
        return self.n

    def column(self, name: str) -> np.ndarray:
        """A read-only view of one column (float64), oldest first."""
        if self._pending:
            self._flush()
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = self._data[COLUMNS.index(name), : self._filled]
            view.flags.writeable = False
        return view

    def revise(self, ts: int, o: float, h: float, lo: float, c: float, v: float) -> bool:
        """Overwrite the stored bar that starts at `ts` (Alpaca's updated bar `u`); False if none does."""
        self._flush()
        times = self._data[0, : self._filled]
        i = int(np.searchsorted(times, ts))
        if i >= self._filled or times[i] != ts:
            return False
        self._data[:, i] = (ts, o, h, lo, c, v)
        return True

    def scale(self, price: float, volume: float) -> None:
        """Move every stored bar to a new basis (a split replayed raw): prices x `price`, volumes x `volume`."""
        self._flush()
        n = self._filled
        self._data[1:5, :n] *= price  # the column views see it: they are views of _data
        self._data[5, :n] *= volume

    @property
    def close(self) -> np.ndarray:
        return self.column("close")

    @property
    def open(self) -> np.ndarray:
        return self.column("open")

    @property
    def high(self) -> np.ndarray:
        return self.column("high")

    @property
    def low(self) -> np.ndarray:
        return self.column("low")

    @property
    def volume(self) -> np.ndarray:
        return self.column("volume")

    @property
    def ts(self) -> np.ndarray:
        return self.column("ts")


def _input_columns(name: str) -> list[str]:
    names: list[str] = []
    for value in abstract.Function(name).input_names.values():
        names.extend(value if isinstance(value, list) else [value])
    return names


def indicator_calls(source: str) -> list[tuple[str, dict[str, Any]]]:
    """The TA-Lib indicators a strategy's source asks for with literal arguments: `ctx.ta(sym, "RSI",
    timeperiod=14)` and `ctx.indicator(...)` calls (name, params). Used to size the warm-up; calls whose
    name or parameters are not literals cannot be sized and are skipped."""
    import ast

    out = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("ta", "indicator")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            continue
        try:
            params = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        except ValueError:
            continue
        out.append((node.args[1].value.upper(), params))
    return out


def lookback(name: str, params: dict[str, Any]) -> int | None:
    """Bars TA-Lib function `name` needs before its first value, minus one (None: not a function)."""
    try:
        return int(abstract.Function(name, **params).lookback)
    except Exception:  # noqa: BLE001 - unknown name or bad params: the strategy finds out at run time
        return None


class StreamIndicator:
    """One TA-Lib function on one symbol's bars, updated once per closed bar.

    `value` is None until the function has its lookback of bars. `peek(x)`
    returns what the value would be if the current bar closed at `x` (single
    input functions only), without changing state.
    """

    __slots__ = ("name", "params", "inputs", "lookback", "_stream", "value", "_cols", "_col")

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        name = name.upper()
        if name not in talib.get_functions() or not hasattr(tstream, name):
            raise ConfigError(f"indicator {name!r}: not a TA-Lib function (see talib.get_functions())")
        self.name = name
        self.params = params
        try:
            self.lookback = abstract.Function(name, **params).lookback
        except Exception as e:  # TA-Lib raises plain Exceptions for bad params
            raise ConfigError(f"indicator {name} {params}: invalid parameters ({e})") from None
        self.inputs = _input_columns(name)
        self._cols = tuple(COLUMNS.index(c) for c in self.inputs)  # positions in a (ts, o, h, l, c, v) bar
        self._col = self._cols[0] if len(self._cols) == 1 else -1
        self._stream: Any = None
        self.value: Any = None

    def on_bar(self, history: BarHistory, bar: tuple | None = None) -> None:
        """Open the stream on the whole history once it is longer than the lookback; then feed each
        new `bar` ((ts, o, h, l, c, v)). `Features.add_bar` updates open one-input streams inline."""
        if self._stream is not None:
            self.value = self._stream.update(*[bar[i] for i in self._cols])
        elif history.n > self.lookback:
            self._stream = getattr(tstream, self.name)(
                *(history.column(c) for c in self.inputs), **self.params
            )
            self.value = self._stream.value

    def peek(self, x: float) -> Any:
        if self._stream is None:
            return None
        return self._stream.peek(x)


class Features:
    """Bar history and indicators for every symbol one runner sees."""

    def __init__(self, keep_bars: int | None = None) -> None:
        self.keep_bars = keep_bars  # per symbol, at most this many bars of history (None: all)
        self.history: dict[str, BarHistory] = {}
        self._indicators: dict[str, dict[tuple, StreamIndicator]] = {}
        self._fast: dict[tuple, StreamIndicator] = {}

    def bars(self, symbol: str) -> BarHistory:
        hist = self.history.get(symbol)
        if hist is None:
            hist = self.history[symbol] = BarHistory(keep=self.keep_bars)
        return hist

    def indicator(self, symbol: str, name: str, **params: Any) -> StreamIndicator:
        """The indicator for (symbol, name, params), created on first use from the stored history."""
        fast = (symbol, name, *params.items())  # as the caller spelled it: the per-event path
        ind = self._fast.get(fast)
        if ind is not None:
            return ind
        per_symbol = self._indicators.setdefault(symbol, {})
        key = (name.upper(), tuple(sorted(params.items())))
        ind = per_symbol.get(key)
        if ind is None:
            ind = per_symbol[key] = StreamIndicator(name, params)
            hist = self.bars(symbol)
            if hist.n:
                ind.on_bar(hist)
        self._fast[fast] = ind
        return ind

    def revise_bar(self, symbol: str, ts: int, o: float, h: float, lo: float, c: float, v: float) -> bool:
        """A stored bar changed after it closed (late prints, a correction): overwrite it and reopen the
        symbol's indicators on the revised history, so they equal the batch functions over it again.
        False when no stored bar starts at `ts` (nothing to revise)."""
        hist = self.history.get(symbol)
        if hist is None or not hist.revise(ts, o, h, lo, c, v):
            return False
        self._reopen(symbol, hist)
        return True

    def adjust(self, symbol: str, price: float, volume: float) -> None:
        """A split replayed raw (`liu.corporate`): the symbol's history moves to the new basis and its
        indicators re-open on the adjusted history, so they continue without a jump."""
        hist = self.history.get(symbol)
        if hist is None:
            return
        hist.scale(price, volume)
        self._reopen(symbol, hist)

    def _reopen(self, symbol: str, hist: BarHistory) -> None:
        """The symbol's stored history changed: its indicators start again from all of it."""
        for ind in self._indicators.get(symbol, {}).values():
            ind._stream, ind.value = None, None
            ind.on_bar(hist)

    def add_bar(self, symbol: str, ts: int, o: float, h: float, lo: float, c: float, v: float) -> None:
        hist = self.bars(symbol)
        hist.append(ts, o, h, lo, c, v)
        indicators = self._indicators.get(symbol)
        if indicators:
            bar = (ts, o, h, lo, c, v)
            for ind in indicators.values():
                stream = ind._stream
                if stream is not None and ind._col >= 0:  # an open one-input stream: update inline
                    ind.value = stream.update(bar[ind._col])
                else:
                    ind.on_bar(hist, bar)
