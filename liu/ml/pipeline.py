"""The feature pipeline: ONE definition per feature, evaluated on whole arrays (training) or bar by bar (live).

Each spec feature becomes one node. A TA-Lib node holds the function name, its full parameter set, its
input names and its output index; the batch path calls the TA-Lib function on arrays and the stream path
builds a `talib.stream` object from the very same fields (bit-identical results, per TA-Lib). A derived
node is one array function in `DERIVED`; batch applies it to whole arrays, the stream applies it to the
tail ring of its inputs and keeps the last element. So there is nothing to keep in sync by hand: a test
checks `np.array_equal(stream rows, batch rows)` on real bars anyway.
"""

from __future__ import annotations

import array
import hashlib
import json
from collections import deque
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


# --------------------------------------------------------------------- stream
# Every value of one stream lives in one float64 buffer: the 5 bar columns, then each feature in spec order.
# Steps read and write it through a memoryview, which stores any number as a C double and reads back plain
# Python floats (no numpy scalar per operation), and the feature part of it is also a numpy row, copied
# once per bar. A step is a closure over slot indices and bound `.update`/`.append` methods.

Step = Callable[[memoryview], None]


class _TaNode:
    """Streaming state of one TA-Lib call, built from the same TaFeature fields the batch path uses.

    Features with the same function, parameters and inputs (e.g. two outputs of one MACD) share one
    node, so the call runs once per bar. Until its inputs have been defined for `lookback + 1` bars the
    node keeps their history (TA-Lib skips leading NaNs in batch); then it builds the talib.stream object
    from that history and puts its hot step in its place in the stream's step list.
    """

    def __init__(self, f: TaFeature, ins: list[int], steps: list[Step], at: int) -> None:
        self.feature = f
        self.ins = ins
        self.outs: list[tuple[int, int]] = []  # (output index or -1 for single-output functions, slot)
        self.multi = len(abstract.Function(f.function).info["output_names"]) > 1
        self.lookback = abstract.Function(f.function, **f.params).lookback
        self.history: list[list[float]] = [[] for _ in ins]
        self.valid = 0  # bars since the first bar with every input defined
        self.steps, self.at = steps, at  # where this node's step sits in the stream's step list

    def add(self, f: TaFeature, slot: int) -> None:
        self.outs.append((f.output_index if self.multi else -1, slot))

    def warm(self, mv: memoryview) -> None:
        """Warm-up step: collect input history; build the stream object once there is enough."""
        xs = [mv[i] for i in self.ins]
        for h, x in zip(self.history, xs, strict=True):
            h.append(x)
        if self.valid or not any(x != x for x in xs):
            self.valid += 1
        if self.valid <= self.lookback:
            for _, s in self.outs:
                mv[s] = NAN
            return
        f = self.feature
        obj = getattr(tstream, f.function)(
            *(np.asarray(h, dtype=np.float64) for h in self.history), **f.params
        )
        self.history = []
        value = obj.value
        for k, s in self.outs:
            mv[s] = value if k < 0 else value[k]
        self.steps[self.at] = self._hot(obj.update)

    def _hot(self, update: Callable[..., Any]) -> Step:
        """The per-bar step: one `update` call, its outputs written to their slots."""
        ins, outs = self.ins, self.outs
        if len(outs) > 1:

            def many(mv: memoryview) -> None:
                r = update(*[mv[i] for i in ins])
                for k, s in outs:
                    mv[s] = r[k]

            return many
        (k, s), n = outs[0], len(ins)
        if n == 1 and k < 0:
            (a,) = ins

            def one(mv: memoryview) -> None:
                mv[s] = update(mv[a])

            return one
        if n == 1:
            (a,) = ins

            def one_of(mv: memoryview) -> None:
                mv[s] = update(mv[a])[k]

            return one_of
        if n == 3 and k < 0:
            a, b, c = ins

            def three(mv: memoryview) -> None:
                mv[s] = update(mv[a], mv[b], mv[c])

            return three

        def general(mv: memoryview) -> None:
            r = update(*[mv[i] for i in ins])
            mv[s] = r if k < 0 else r[k]

        return general


def _quiet(kernel: Callable[[Any, Any], Any], x: float, y: float) -> float:
    """The kernel on np.float64 scalars: IEEE inf/NaN where Python floats raise ZeroDivisionError."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return float(kernel(np.float64(x), np.float64(y)))


def _derived_step(kernel: Callable[[Any, Any], Any], a: int, b: int, out: int) -> Step:
    """out = kernel(slot a, slot b) on Python floats (the same IEEE operations as numpy's, so the same bits)."""

    def step(mv: memoryview) -> None:
        x, y = mv[a], mv[b]
        try:
            mv[out] = kernel(x, y)
        except ArithmeticError:  # x / 0.0 (Python raises; numpy gives ±inf or NaN)
            mv[out] = _quiet(kernel, x, y)

    return step


def _lagged_step(kernel: Callable[[Any, Any], Any], a: int, ring: deque[float], n: int, out: int) -> Step:
    """out = kernel(slot a now, slot a n bars ago); `ring` holds slot a's last values, the current one last."""
    back = -1 - n

    def step(mv: memoryview) -> None:
        x, y = mv[a], ring[back]
        try:
            mv[out] = kernel(x, y)
        except ArithmeticError:
            mv[out] = _quiet(kernel, x, y)

    return step


def _push_step(append: Callable[[float], None], slot: int) -> Step:
    def step(mv: memoryview) -> None:
        append(mv[slot])

    return step


class FeatureStream:
    """Bar-by-bar features for one symbol; `update` returns the same row `batch` has for that bar."""

    def __init__(self, pipeline: FeaturePipeline) -> None:
        self.pipeline = pipeline
        self.names = pipeline.names
        self.width = pipeline.width
        self.bars = 0
        self._lookback = pipeline.lookback
        ncol = len(COLUMNS)
        self._buf = array.array("d", [NAN] * (ncol + pipeline.width))
        self._mv = memoryview(self._buf)
        self._row = np.frombuffer(self._buf, dtype=np.float64, offset=ncol * 8)
        slot = pipeline._slot
        # Rings: the last `window` values of each slot a lagged feature reads (NaN before they exist).
        rings = {s: deque([NAN] * w, maxlen=w) for s, w in pipeline._window.items()}
        self._col_rings = [(s, r.append) for s, r in rings.items() if s < ncol]
        self._steps: list[Step] = []
        nodes: dict[str, _TaNode] = {}
        for i, f in enumerate(pipeline.features):
            out = ncol + i
            ins = [slot[r] for r in f.refs]
            if isinstance(f, TaFeature):
                key = json.dumps([f.function, f.params, ins], sort_keys=True)
                if key not in nodes:
                    nodes[key] = node = _TaNode(f, ins, self._steps, len(self._steps))
                    self._steps.append(node.warm)
                nodes[key].add(f, out)
            else:
                kernel, lagged = DERIVED[f.kind]
                if lagged:
                    self._steps.append(_lagged_step(kernel, ins[0], rings[ins[0]], f.n, out))
                else:
                    self._steps.append(_derived_step(kernel, ins[0], ins[1], out))
            if out in rings:
                # A shared TA node writes this slot at its own (earlier) step, so pushing here is in time.
                self._steps.append(_push_step(rings[out].append, out))

    def update(self, o: float, h: float, l: float, c: float, v: float) -> np.ndarray | None:  # noqa: E741
        """Feed one closed bar; the float64 feature row for it (a fresh array), or None while warming up."""
        mv = self._mv
        mv[0], mv[1], mv[2], mv[3], mv[4] = o, h, l, c, v
        for s, append in self._col_rings:
            append(mv[s])
        for step in self._steps:
            step(mv)
        self.bars += 1
        if self.bars <= self._lookback:
            return None
        return self._row.copy()
