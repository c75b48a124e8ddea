"""The feature pipeline: ONE definition per feature, evaluated on whole arrays (training) or bar by bar (live).

Each spec feature becomes one node. A TA-Lib node holds the function name, its full parameter set, its
input names and its output index; the batch path calls the TA-Lib function on arrays and the stream path
builds a `talib.stream` object from the very same fields (bit-identical results, per TA-Lib). A derived
node is one elementwise function in `DERIVED`; batch applies it to whole arrays, the stream to the plain
Python floats of one bar (the same IEEE double operations, so the same bits). So there is nothing to keep
in sync by hand: a test checks `np.array_equal(stream rows, batch rows)` on real bars anyway.

The stream runs once per bar per symbol in every consumer, so it is compiled: the pipeline writes the
spec's evaluation order once as a straight-line Python function (`FeaturePipeline.stream_source`: one
line per TA-Lib call or derived kernel, values in local variables) and each stream binds it to its own
talib.stream objects and rings: about 4× faster than walking a list of nodes per bar (benchmarks/inference.py).
"""

from __future__ import annotations

import array
import hashlib
import json
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import talib
import talib.stream as tstream
from talib import abstract

from liu.ml.spec import COLUMNS, DerivedFeature, ModelSpec, TaFeature

NAN = float("nan")


def shift(x: np.ndarray, n: int) -> np.ndarray:
    """x[t - n] at each t (NaN for the first n rows)."""
    out = np.full(len(x), NAN)
    out[n:] = x[: len(x) - n]
    return out


# kind -> (elementwise kernel, whether its second operand is the first input n bars ago).
# The kernel is the one definition: batch applies it to whole arrays, the stream to Python floats.
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
        first = dict.fromkeys(COLUMNS, 0)  # index of each name's first non-NaN row
        for f in self.features:
            start = max(first[r] for r in f.refs)
            if isinstance(f, TaFeature):
                first[f.name] = start + abstract.Function(f.function, **f.params).lookback
            else:
                first[f.name] = start + window(f.kind, f.n) - 1
        self.first_valid = {f.name: first[f.name] for f in self.features}
        self.lookback: int = max(self.first_valid.values())
        # Rings: how many recent values of each name the lagged derived features look at.
        self._window: dict[str, int] = {}
        for f in self.features:
            if isinstance(f, DerivedFeature) and DERIVED[f.kind][1]:
                r = f.refs[0]
                self._window[r] = max(self._window.get(r, 1), window(f.kind, f.n))
        self._calls, self.stream_source = _stream_program(self)
        # Per call, what each stream's warm-up needs (abstract.Function is slow: built once, here).
        self._call_info: list[tuple[int, Any]] = []
        for f in self._calls:
            n_out = len(abstract.Function(f.function).info["output_names"])
            lookback = abstract.Function(f.function, **f.params).lookback
            self._call_info.append((lookback, (NAN,) * n_out if n_out > 1 else NAN))
        self._code = compile(self.stream_source, f"<liu.ml.pipeline stream of {spec.name!r}>", "exec")
        self._pack = struct.Struct(f"={self.width}d").pack_into

    # ------------------------------------------------------------------ batch

    def batch_named(self, bars: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every column and feature as a full float64 array (NaN during warm-up), by name."""
        n = len(bars["close"])
        values: dict[str, np.ndarray] = {}
        for c in COLUMNS:
            col = bars.get(c)
            values[c] = np.full(n, NAN) if col is None else np.ascontiguousarray(col, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
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


def _stream_program(pipe: FeaturePipeline) -> tuple[list[TaFeature], str]:
    """The TA-Lib calls of one bar (features sharing function, params and inputs share one call, e.g.
    two outputs of one MACD) and the source of `update(o, h, l, c, v) -> row`, in spec order.

    Names in the source: o h l c v (the bar), f<i> (feature i), ta<j> (call j: a talib.stream `.update`),
    ring_<x>/push_<x> (the last values of x and their `append`), one function per derived kind (the
    `DERIVED` kernel itself), quiet, pack, buf, row. Only indices and kind names are written into the
    code; feature names appear as repr() comments.
    """
    var = {c: c[0] for c in COLUMNS}
    used = [var[c] for c in COLUMNS if any(c in f.refs for f in pipe.features)]
    lines = ["def update(o, h, l, c, v):"]
    if used:  # plain floats for the derived kernels (np.float64 would do numpy scalar math)
        lines.append(f"    {', '.join(used)} = {', '.join(f'float({x})' for x in used)}")
    lines += [f"    push_{var[c]}({var[c]})" for c in COLUMNS if c in pipe._window]
    calls: list[TaFeature] = []
    result: dict[str, str] = {}  # call key -> the variable holding its result
    for i, f in enumerate(pipe.features):
        x = var[f.name] = f"f{i}"
        args = ", ".join(var[r] for r in f.refs)
        lines.append(f"    # {f.name!r}")
        if isinstance(f, TaFeature):
            multi = len(abstract.Function(f.function).info["output_names"]) > 1
            key = json.dumps([f.function, f.params, f.refs], sort_keys=True)
            if key not in result:
                result[key] = f"r{len(calls)}" if multi else x
                lines.append(f"    {result[key]} = ta{len(calls)}({args})")
                calls.append(f)
            if multi:
                lines.append(f"    {x} = {result[key]}[{f.output_index}]")
            elif result[key] != x:
                lines.append(f"    {x} = {result[key]}")
        else:
            a = var[f.refs[0]]
            b = f"ring_{a}[{-1 - f.n}]" if DERIVED[f.kind][1] else var[f.refs[1]]
            lines += [
                "    try:",
                f"        {x} = {f.kind}({a}, {b})",
                "    except ArithmeticError:  # x / 0.0: Python raises, numpy gives inf or NaN",
                f"        {x} = quiet({f.kind}, {a}, {b})",
            ]
        if f.name in pipe._window:
            lines.append(f"    push_{x}({x})")
    outs = ", ".join(var[n] for n in pipe.names)
    lines += [f"    pack(buf, 0, {outs})", "    return row.copy()", ""]
    return calls, "\n".join(lines)


def _quiet(kernel: Callable[[Any, Any], Any], x: float, y: float) -> float:
    """The kernel on np.float64 scalars: IEEE inf/NaN where Python floats raise ZeroDivisionError."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return float(kernel(np.float64(x), np.float64(y)))


class _TaNode:
    """Warm-up of one TA-Lib call: NaN until its inputs have been defined for `lookback + 1` bars (TA-Lib
    skips leading NaNs in batch), then the talib.stream object built from that input history."""

    def __init__(self, f: TaFeature, lookback: int, nan: Any) -> None:
        self.feature = f
        self.lookback = lookback
        self.nan = nan
        self.history: list[list[float]] = [[] for _ in f.refs]
        self.valid = 0  # bars since the first bar with every input defined
        self.obj: Any = None

    def __call__(self, *xs: float) -> Any:
        if self.obj is not None:
            return self.obj.update(*xs)
        for h, x in zip(self.history, xs, strict=True):
            h.append(x)
        if self.valid or not any(x != x for x in xs):
            self.valid += 1
        if self.valid <= self.lookback:
            return self.nan
        f = self.feature
        self.obj = getattr(tstream, f.function)(
            *(np.asarray(h, dtype=np.float64) for h in self.history), **f.params
        )
        self.history = []
        return self.obj.value


class FeatureStream:
    """Bar-by-bar features for one symbol; `update` returns the same row `batch` has for that bar."""

    def __init__(self, pipeline: FeaturePipeline) -> None:
        self.pipeline = pipeline
        self.names = pipeline.names
        self.width = pipeline.width
        self.bars = 0
        self._lookback = pipeline.lookback
        self._nodes = [
            _TaNode(f, *info) for f, info in zip(pipeline._calls, pipeline._call_info, strict=True)
        ]
        buf = array.array("d", [NAN] * pipeline.width)
        self._ns: dict[str, Any] = {
            "quiet": _quiet,
            "pack": pipeline._pack,
            "buf": buf,
            "row": np.frombuffer(buf, dtype=np.float64),
            **{kind: kernel for kind, (kernel, _) in DERIVED.items()},
        }
        var = {c: c[0] for c in COLUMNS} | {n: f"f{i}" for i, n in enumerate(pipeline.names)}
        for name, w in pipeline._window.items():  # the last w values of `name` (NaN before they exist)
            ring = deque([NAN] * w, maxlen=w)
            self._ns[f"ring_{var[name]}"], self._ns[f"push_{var[name]}"] = ring, ring.append
        self._warm = self._bind(self._nodes)
        self._run: Callable[..., np.ndarray | None] = self._warm_up

    def _bind(self, calls: list[Callable[..., Any]]) -> Callable[..., np.ndarray]:
        ns = self._ns | {f"ta{j}": call for j, call in enumerate(calls)}
        exec(self.pipeline._code, ns)  # noqa: S102 - code generated by _stream_program from the spec
        return ns["update"]

    def update(self, o: float, h: float, l: float, c: float, v: float) -> np.ndarray | None:  # noqa: E741
        """Feed one closed bar; the float64 feature row for it (a fresh array), or None while warming up."""
        self.bars += 1
        return self._run(o, h, l, c, v)

    def _warm_up(self, o: float, h: float, l: float, c: float, v: float) -> np.ndarray | None:  # noqa: E741
        """`update` until warm-up is over and every TA-Lib call has its stream object; then `update` runs
        the same compiled source bound straight to the objects' `.update` methods (same state, same
        rings): no per-bar bookkeeping is left on the hot path."""
        row = self._warm(o, h, l, c, v)
        if self.bars <= self._lookback:
            return None
        if all(n.obj is not None for n in self._nodes):
            self._run = self._bind([n.obj.update for n in self._nodes])
        return row
