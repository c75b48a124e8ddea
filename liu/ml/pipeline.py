"""The feature pipeline: ONE definition per feature, evaluated on whole arrays (training) or bar by bar (live).

Each spec feature becomes one node. A TA-Lib node holds the function name, its full parameter set, its
input names and its output index; the batch path calls the TA-Lib function on arrays and the stream path
builds a `talib.stream` object from the very same fields (bit-identical results, per TA-Lib). A derived
node is one array function in `DERIVED`; batch applies it to whole arrays, the stream applies it to the
tail ring of its inputs and keeps the last element. So there is nothing to keep in sync by hand: a test
checks `np.array_equal(stream rows, batch rows)` on real bars anyway.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import talib
import talib.stream as tstream
from talib import abstract

from liu.ml.spec import COLUMNS, DerivedFeature, ModelSpec, TaFeature

NAN = float("nan")
_INF = float("inf")


def shift(x: np.ndarray, n: int) -> np.ndarray:
    """x[t - n] at each t (NaN for the first n rows)."""
    out = np.full(len(x), NAN)
    out[n:] = x[: len(x) - n]
    return out


# kind -> (elementwise kernel, whether its second operand is the first input n bars ago).
# The kernel is the one definition: batch applies it to whole arrays, the stream to np.float64 scalars
# (the same IEEE operations, so the same bits).
DERIVED: dict[str, tuple[Callable[[Any, Any], Any], bool]] = {
    "diff": (lambda a, b: a - b, False),
    "ratio": (lambda a, b: a / b, False),
    "change": (lambda x, x_n: x - x_n, True),
    "pct_change": (lambda x, x_n: x / x_n - 1.0, True),
    "lag": (lambda x, x_n: x_n, True),
}


def window(kind: str, n: int) -> int:
    """Bars of an input a derived feature looks at, the current one included."""
    return n + 1 if DERIVED[kind][1] else 1


def spec_hash(spec: ModelSpec) -> str:
    """sha256 of the canonical feature definitions (names, functions, params, inputs, order)."""
    canon = [f.canonical() for f in spec.features]
    text = json.dumps(canon, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class FeaturePipeline:
    """Features of one spec, in spec order; `batch` for training, `stream()` per symbol for live bars."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.features = list(spec.features)
        self.names: list[str] = [f.name for f in self.features]
        self.width: int = len(self.names)
        self.spec_hash: str = spec_hash(spec)
        # Value slots: the 5 bar columns, then each feature in order.
        self._slot = {c: i for i, c in enumerate(COLUMNS)}
        for i, f in enumerate(self.features):
            self._slot[f.name] = len(COLUMNS) + i
        first = dict.fromkeys(COLUMNS, 0)  # index of each name's first non-NaN row
        for f in self.features:
            start = max(first[r] for r in f.refs)
            if isinstance(f, TaFeature):
                first[f.name] = start + abstract.Function(f.function, **f.params).lookback
            else:
                first[f.name] = start + window(f.kind, f.n) - 1
        self.first_valid = {f.name: first[f.name] for f in self.features}
        self.lookback: int = max(self.first_valid.values())
        # Rings: how many recent values of each slot the lagged derived features look at.
        self._window: dict[int, int] = {}
        for f in self.features:
            if isinstance(f, DerivedFeature) and DERIVED[f.kind][1]:
                s = self._slot[f.refs[0]]
                self._window[s] = max(self._window.get(s, 1), window(f.kind, f.n))

    # ------------------------------------------------------------------ batch

    def batch_named(self, bars: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every column and feature as a full float64 array (NaN during warm-up), by name."""
        n = len(bars["close"])
        values: dict[str, np.ndarray] = {}
        for c in COLUMNS:
            col = bars.get(c)
            values[c] = np.full(n, NAN) if col is None else np.ascontiguousarray(col, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            for f in self.features:
                ins = [values[r] for r in f.refs]
                if isinstance(f, TaFeature):
                    values[f.name] = _ta_batch(f, ins, n)
                else:
                    kernel, lagged = DERIVED[f.kind]
                    args = (ins[0], shift(ins[0], f.n)) if lagged else ins
                    values[f.name] = np.asarray(kernel(*args), dtype=np.float64)
                # Warm-up is NaN in both paths (TA-Lib's integer functions, e.g. candlesticks, give 0 there).
                values[f.name][: self.first_valid[f.name]] = NAN
        return values

    def batch(self, bars: dict[str, np.ndarray]) -> np.ndarray:
        """(n, width) float64 feature matrix for one symbol's bars (keys open high low close volume)."""
        values = self.batch_named(bars)
        n = len(bars["close"])
        out = np.empty((n, self.width), dtype=np.float64)
        for j, name in enumerate(self.names):
            out[:, j] = values[name]
        return out

    # ----------------------------------------------------------------- stream

    def stream(self) -> FeatureStream:
        """A fresh bar-by-bar evaluator (one per symbol; holds talib.stream objects, so not picklable)."""
        return FeatureStream(self)


def _ta_batch(f: TaFeature, ins: list[np.ndarray], n: int) -> np.ndarray:
    fn = getattr(talib, f.function)
    try:
        res = fn(*ins, **f.params)
    except Exception as e:  # noqa: BLE001 - TA-Lib raises plain Exception when all inputs are NaN
        if "all" in str(e).lower() and "nan" in str(e).lower():
            return np.full(n, NAN)
        raise
    if isinstance(res, tuple):
        res = res[f.output_index]
    return np.asarray(res, dtype=np.float64)


class _TaNode:
    """Streaming state of one TA-Lib feature, built from the same TaFeature the batch path uses."""

    __slots__ = ("feature", "ins", "out", "lookback", "index", "history", "valid", "obj")

    def __init__(self, f: TaFeature, ins: list[int], out: int) -> None:
        self.feature = f
        self.ins = ins
        self.out = out
        self.lookback = abstract.Function(f.function, **f.params).lookback
        self.index = f.output_index if len(abstract.Function(f.function).info["output_names"]) > 1 else -1
        self.history: list[list[float]] | None = [[] for _ in ins]
        self.valid = 0  # bars since the first bar with every input defined
        self.obj: Any = None

    def step(self, vals: list[float]) -> None:
        xs = [vals[i] for i in self.ins]
        if self.obj is not None:
            v = self.obj.update(*xs)
        else:
            hist = self.history
            for h, x in zip(hist, xs, strict=True):
                h.append(x)
            if self.valid or not any(x != x for x in xs):
                self.valid += 1
            if self.valid <= self.lookback:
                vals[self.out] = NAN
                return
            f = self.feature
            arrays = [np.asarray(h, dtype=np.float64) for h in hist]
            self.obj = getattr(tstream, f.function)(*arrays, **f.params)
            self.history = None
            v = self.obj.value
        if self.index >= 0:
            v = v[self.index]
        vals[self.out] = float(v)


def _plain(x: float, y: float) -> bool:
    """True when no IEEE exception can occur (finite, non-zero operands): skip np.errstate (about 5 µs)."""
    return x != 0.0 and y != 0.0 and -_INF < x < _INF and -_INF < y < _INF


def _quiet(kernel: Callable[[Any, Any], Any], x: float, y: float) -> Any:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return kernel(np.float64(x), np.float64(y))


class _Ring:
    """The last `size` values of one slot (NaN before they exist); `ago(n)` is the value n bars back."""

    __slots__ = ("size", "buf", "i")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = [NAN] * size
        self.i = -1

    def push(self, x: float) -> None:
        self.i = (self.i + 1) % self.size
        self.buf[self.i] = x

    def ago(self, n: int) -> float:
        return self.buf[(self.i - n) % self.size]


class FeatureStream:
    """Bar-by-bar features for one symbol; `update` returns the same row `batch` has for that bar."""

    def __init__(self, pipeline: FeaturePipeline) -> None:
        self.pipeline = pipeline
        self.names = pipeline.names
        self.width = pipeline.width
        self.bars = 0
        self._lookback = pipeline.lookback
        slot = pipeline._slot
        self._vals: list[Any] = [NAN] * (len(COLUMNS) + pipeline.width)
        self._rings: dict[int, _Ring] = {s: _Ring(w) for s, w in pipeline._window.items()}
        self._col_rings = [(s, r) for s, r in self._rings.items() if s < len(COLUMNS)]
        self._steps: list[Callable[[list[Any]], None]] = []
        for i, f in enumerate(pipeline.features):
            out = len(COLUMNS) + i
            ins = [slot[r] for r in f.refs]
            if isinstance(f, TaFeature):
                self._steps.append(_TaNode(f, ins, out).step)
            else:
                self._steps.append(self._derived_step(f, ins, out))
            if out in self._rings:
                self._steps.append(self._push_step(out))
        self._out_slots = slice(len(COLUMNS), len(COLUMNS) + pipeline.width)

    def _derived_step(self, f: DerivedFeature, ins: list[int], out: int) -> Callable[[list[Any]], None]:
        kernel, lagged = DERIVED[f.kind]
        f64 = np.float64
        if lagged:
            src, ring, n = ins[0], self._rings[ins[0]], f.n

            def step(vals: list[Any]) -> None:
                x, y = vals[src], ring.ago(n)
                vals[out] = float(kernel(f64(x), f64(y)) if _plain(x, y) else _quiet(kernel, x, y))

        else:
            a, b = ins

            def step(vals: list[Any]) -> None:
                x, y = vals[a], vals[b]
                vals[out] = float(kernel(f64(x), f64(y)) if _plain(x, y) else _quiet(kernel, x, y))

        return step

    def _push_step(self, slot: int) -> Callable[[list[Any]], None]:
        ring = self._rings[slot]

        def step(vals: list[Any]) -> None:
            ring.push(vals[slot])

        return step

    def update(self, o: float, h: float, l: float, c: float, v: float) -> np.ndarray | None:  # noqa: E741
        """Feed one closed bar; the float64 feature row for it, or None while warming up."""
        vals = self._vals
        vals[0], vals[1], vals[2], vals[3], vals[4] = float(o), float(h), float(l), float(c), float(v)
        for s, ring in self._col_rings:
            ring.push(vals[s])
        for step in self._steps:
            step(vals)
        self.bars += 1
        if self.bars <= self._lookback:
            return None
        return np.array(vals[self._out_slots], dtype=np.float64)
