"""Live scoring: ONNX models run at each bar close inside a runner, and swapped between two bars.

A model file is validated before it is used (loads, input width = the feature pipeline's width, spec
hash = the hash of the pipeline the consumer built from the spec named in the tradeplan), so a wrong
file is refused with one message naming it and never scores a bar. `ModelScorer` is a runner bar hook:
per spec it keeps one `FeatureStream` per symbol, computes the row once per bar, and runs every model
built on that spec on a preallocated float32 buffer. Swapping replaces one reference in plain (not
async) code, so a bar is scored wholly by the old or wholly by the new version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from liu.errors import ConfigError
from liu.events import Bar

log = logging.getLogger(__name__)


class ModelFileError(ConfigError):
    """A model file cannot be used: unreadable, or not made for the features the consumer computes."""


class PipelineLike(Protocol):
    """What scoring needs from `liu.ml.pipeline.FeaturePipeline`."""

    names: list[str]
    width: int
    spec_hash: str

    def stream(self) -> Any: ...


def session_options() -> ort.SessionOptions:
    """One thread per session: a consumer owns one core, and ORT's spinning pool would steal the other."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: the file is reported by us, with its name
    return so


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A validated ONNX session and what scoring needs to call it."""

    name: str
    version: int
    path: Path
    session: ort.InferenceSession
    input: str
    output: str
    classes: tuple  # class labels in probability order, or ("value",) for a regressor
    width: int
    spec_hash: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def is_regressor(self) -> bool:
        return self.classes == ("value",)

    def runner(self) -> Callable[..., list]:
        """The session's bound C++ run (skips ~15 µs of Python input checks already done at load)."""
        inner = getattr(self.session, "_sess", None)
        return inner.run if inner is not None else self.session.run

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Outputs for many rows: (n, classes) probabilities or (n, 1) values (tests, batch use)."""
        x = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, self.width)
        out = self.session.run([self.output], {self.input: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)


def _classes(meta: dict[str, str], where: str) -> tuple | None:
    raw = meta.get("liu.outputs")
    if raw is None:
        return None
    if raw == "value":
        return ("value",)
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if value == "value":
        return ("value",)
    if not isinstance(value, list) or not value:
        raise ModelFileError(
            f"{where}: metadata liu.outputs={raw!r}, expected a JSON list of class labels or 'value'"
        )
    return tuple(value)


def load_model(
    path: Path,
    pipeline: PipelineLike,
    *,
    name: str,
    version: int,
    spec_file: Path | str = "the spec",
) -> LoadedModel:
    """Open `path` with onnxruntime and check it fits `pipeline`; raise ModelFileError naming the file if not."""
    path = Path(path)
    where = f"model {name} version {version} ({path})"
    if not path.is_file():
        raise ModelFileError(f"{where}: file not found")
    try:
        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own non-exported types
        raise ModelFileError(f"{where}: onnxruntime cannot load it ({_first_line(e)})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        got = [(i.name, i.type) for i in inputs]
        raise ModelFileError(f"{where}: expected one float32 input (rows of features), the file has {got}")
    shape = inputs[0].shape
    declared = shape[-1] if len(shape) == 2 and isinstance(shape[-1], int) else None
    if "liu.input_width" in meta:
        try:
            meta_width = int(meta["liu.input_width"])
        except ValueError:
            raise ModelFileError(
                f"{where}: metadata liu.input_width={meta['liu.input_width']!r} is not a number"
            ) from None
        declared = declared if declared is not None else meta_width
        if meta_width != declared:
            raise ModelFileError(
                f"{where}: metadata says input width {meta_width}, the graph says {declared}"
            )
    if declared is None:
        raise ModelFileError(
            f"{where}: declares no input width (graph input {shape}, no liu.input_width metadata)"
        )
    if declared != pipeline.width:
        raise ModelFileError(
            f"{where}: input width {declared}, but the feature pipeline built from {spec_file} has "
            f"{pipeline.width} features {pipeline.names}"
        )
    got_hash = meta.get("liu.spec_hash")
    if got_hash is None:
        raise ModelFileError(
            f"{where}: no liu.spec_hash metadata, so it cannot be checked against the features of {spec_file}"
        )
    if got_hash != pipeline.spec_hash:
        raise ModelFileError(
            f"{where}: spec hash {got_hash[:12]}… differs from {pipeline.spec_hash[:12]}… of the features "
            f"built from {spec_file}: it was trained on other features (retrain it, or fix the spec)"
        )
    if "liu.feature_names" in meta:
        try:
            names = json.loads(meta["liu.feature_names"])
        except ValueError:
            names = meta["liu.feature_names"]
        if names != list(pipeline.names):
            raise ModelFileError(
                f"{where}: feature names {names} differ from {list(pipeline.names)} of {spec_file}"
            )
    for key, want in (("liu.name", name), ("liu.version", str(version))):
        if key in meta and meta[key] != want:
            raise ModelFileError(
                f"{where}: metadata {key}={meta[key]!r}, expected {want!r} (file in the wrong place?)"
            )
    output, classes = _pick_output(session, _classes(meta, where), where)
    loaded = LoadedModel(
        name, version, path, session, inputs[0].name, output, classes, declared, got_hash, meta
    )
    try:  # one trial row: a graph that cannot run is refused here, not at the first bar
        out = loaded.predict(np.zeros((1, declared), dtype=np.float32))
    except Exception as e:  # noqa: BLE001
        raise ModelFileError(f"{where}: a trial run failed ({_first_line(e)})") from None
    if out.shape[1] != len(classes):
        raise ModelFileError(
            f"{where}: output {output!r} has {out.shape[1]} values per row, expected {len(classes)} {classes}"
        )
    return loaded


def _pick_output(session: ort.InferenceSession, classes: tuple | None, where: str) -> tuple[str, tuple]:
    """The output strategies see: probabilities (classifiers, zipmap off) or the value (regressors)."""
    floats = [o for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(double)")]
    if not floats:
        got = [(o.name, o.type) for o in session.get_outputs()]
        raise ModelFileError(
            f"{where}: no float tensor output (got {got}; export classifiers with zipmap off)"
        )
    if classes == ("value",):
        return floats[0].name, classes
    named = [o for o in floats if o.name == "probabilities"]
    out = named[0] if named else floats[-1]
    if classes is None:  # a model from elsewhere: class indices, or a value if it has one column
        k = out.shape[-1] if len(out.shape) == 2 and isinstance(out.shape[-1], int) else 1
        classes = tuple(range(k)) if k > 1 else ("value",)
    return out.name, classes


# --------------------------------------------------------------------------- scoring


class PredictionSink(Protocol):
    def add(self, model: str, version: int, symbol: str, bar_ts: int, outputs: np.ndarray) -> None: ...


class _Model:
    """One model name in a scorer: the version serving now, and what it produced."""

    __slots__ = (
        "name",
        "group",
        "strategies",
        "pinned",
        "loaded",
        "version",
        "run",
        "outs",
        "feed",
        "latest",
        "scored",
        "errors",
        "refused",
        "bars",
        "warming",
    )

    def __init__(self, loaded: LoadedModel, group: _Group, strategies: set[str], pinned: int | None) -> None:
        self.name = loaded.name
        self.group = group
        self.strategies = strategies
        self.pinned = pinned
        self.latest: dict[str, np.ndarray | None] = {}
        self.scored: dict[int, int] = {}
        self.errors = 0
        self.refused: dict[int, str] = {}
        self.bars = 0  # closed bars of symbols this model's strategies trade
        self.warming = 0  # ... of which the features were still warming up
        self.set(loaded)

    def set(self, loaded: LoadedModel) -> None:
        self.loaded, self.version = loaded, loaded.version
        self.run, self.outs = loaded.runner(), [loaded.output]
        self.feed = {loaded.input: self.group.buf}
        self.scored.setdefault(loaded.version, 0)

    def wants(self, route: list | None) -> bool:
        if route:
            names = self.strategies
            for slot in route:
                if slot.strategy.name in names:
                    return True
        return False


class _Group:
    """Models sharing one feature pipeline: the row is computed once per bar for all of them."""

    __slots__ = ("pipeline", "streams", "buf", "models")

    def __init__(self, pipeline: PipelineLike) -> None:
        self.pipeline = pipeline
        self.streams: dict[str, Any] = {}
        self.buf = np.zeros((1, pipeline.width), dtype=np.float32)
        self.models: list[_Model] = []


class ModelScorer:
    """Runner bar hook: features and model outputs at each bar close, for the strategies that asked.

    It is a `liu.hooks.ModelHook`: the runner, the strategies' contexts and the consumer know it only
    through that protocol.

    `routes` is the runner's symbol → strategy-slot routing; a model runs on a bar only if a strategy
    that lists it trades that symbol (features are still updated, so they are warm when it starts).
    """

    def __init__(self, routes: dict[str, list] | None = None, sink: PredictionSink | None = None) -> None:
        self.routes = routes
        self.sink = sink
        self.models: dict[str, _Model] = {}
        self._groups: list[_Group] = []

    def add(
        self,
        loaded: LoadedModel,
        pipeline: PipelineLike,
        *,
        strategies: Iterable[str],
        pinned: int | None = None,
    ) -> None:
        """Serve `loaded` (already validated against `pipeline`) for `strategies`."""
        if loaded.name in self.models:
            self.models[loaded.name].strategies.update(strategies)
            return
        group = next((g for g in self._groups if g.pipeline.spec_hash == pipeline.spec_hash), None)
        if group is None:
            group = _Group(pipeline)
            self._groups.append(group)
        m = _Model(loaded, group, set(strategies), pinned)
        group.models.append(m)
        self.models[loaded.name] = m

    # -- the bar hook (hot path: once per closed bar per symbol) ----------------------
    def __call__(self, bar: Bar) -> None:
        sym = bar.symbol
        route = self.routes.get(sym) if self.routes is not None else None
        sink = self.sink
        for g in self._groups:
            stream = g.streams.get(sym)
            if stream is None:
                stream = g.streams[sym] = g.pipeline.stream()
            try:
                row = stream.update(bar.open, bar.high, bar.low, bar.close, bar.volume)
            except Exception as e:  # noqa: BLE001 - e.g. a NaN reaching talib.stream: restart this symbol's
                # features (they warm up again) rather than stop the consumer
                g.streams[sym] = g.pipeline.stream()
                log.error(
                    "features of %s for %s failed at bar %d (%s); warming up again",
                    sym,
                    g.models[0].name,
                    bar.ts,
                    e,
                )
                row = None
            filled = False
            for m in g.models:
                if self.routes is not None and not m.wants(route):
                    continue
                m.bars += 1
                if row is None:
                    m.warming += 1
                    continue
                if not filled:
                    g.buf[0] = row
                    filled = True
                try:
                    out = m.run(m.outs, m.feed, None)[0][0]
                except Exception as e:  # noqa: BLE001 - one bad row must not stop the consumer
                    m.errors += 1
                    m.latest[sym] = None
                    if m.errors in (1, 10, 100, 1000):
                        log.error(
                            "model %s v%d failed on %s: %s (%d errors)", m.name, m.version, sym, e, m.errors
                        )
                    continue
                m.latest[sym] = out
                m.scored[m.version] += 1
                if sink is not None:
                    sink.add(m.name, m.version, sym, bar.ts, out)

    # -- swapping (between two bars; the caller loaded and validated off the hot path) --
    def swap(self, name: str, loaded: LoadedModel) -> int:
        """Serve `loaded` for model `name` from the next bar on; return the version it replaced."""
        m = self.models[name]
        old = m.version
        if loaded.classes != m.loaded.classes:
            raise ModelFileError(
                f"model {name} version {loaded.version} ({loaded.path}): outputs {loaded.classes} differ from "
                f"{m.loaded.classes} of version {old}, which the strategies were started with"
            )
        m.set(loaded)
        log.info("model %s: now serving version %d (was %d)", name, loaded.version, old)
        return old

    def refuse(self, name: str, version: int, reason: str) -> None:
        """Record a version that failed validation; logged once, the serving version keeps running."""
        m = self.models[name]
        if version not in m.refused:
            m.refused[version] = reason
            log.error("%s; keeping version %d of model %s", reason, m.version, name)

    # -- for strategies ------------------------------------------------------------
    def latest(self, name: str) -> dict[str, np.ndarray | None]:
        return self.models[name].latest

    def classes(self, name: str) -> tuple:
        return self.models[name].loaded.classes

    def version(self, name: str) -> int:
        return self.models[name].version

    def stats(self) -> dict[str, dict]:
        """Per model: bars seen, warming up, scored per version, errors, refused versions."""
        return {
            name: {
                "version": m.version,
                "pinned": m.pinned,
                "bars": m.bars,
                "warming": m.warming,
                "scored": {str(v): n for v, n in m.scored.items()},
                "errors": m.errors,
                "refused": {str(v): r for v, r in m.refused.items()},
            }
            for name, m in self.models.items()
        }


def scorer_of(runner: Any) -> ModelScorer | None:
    """The ModelScorer among a runner's bar hooks, if the plan named models."""
    return next((h for h in runner.bar_hooks if isinstance(h, ModelScorer)), None)


# --------------------------------------------------------------------------- the tradeplan's models


@dataclass(eq=False)
class PlanModel:
    """One model named in the tradeplan: its spec's pipeline, registry and the strategies using it."""

    name: str
    spec_file: Path
    pipeline: Any  # liu.ml.pipeline.FeaturePipeline
    registry: Any  # liu.ml.registry.Registry
    pinned: int | None
    weights: dict[str, float] = field(default_factory=dict)  # strategy label -> vote weight
    loaded: LoadedModel | None = None


def plan_models(plan: Any, dsn: str | None, features_only: bool = False) -> list[PlanModel]:
    """Specs → pipelines and registries for every model of the plan's strategies (nothing loaded yet).

    `features_only`: skip the specs' estimator checks (a consumer, after the daemon checked them all).
    """
    from liu.ml.pipeline import FeaturePipeline
    from liu.ml.registry import Registry
    from liu.ml.spec import load_spec

    by_spec: dict[Path, PlanModel] = {}
    names: dict[str, Path] = {}
    for sp in plan.strategies:
        for ref in sp.models:
            path = plan.path(ref.spec).resolve()
            pm = by_spec.get(path)
            if pm is None:
                spec = load_spec(path, features_only)
                if spec.name in names:
                    raise ConfigError(
                        f"tradeplan: specs {names[spec.name]} and {path} both define model {spec.name!r}; "
                        "model names must be unique"
                    )
                names[spec.name] = path
                registry = Registry(spec.registry_root, dsn)
                pm = by_spec[path] = PlanModel(spec.name, path, FeaturePipeline(spec), registry, ref.version)
            pm.weights[sp.label] = ref.weight
    return list(by_spec.values())


def load_version(pm: PlanModel, version: int) -> LoadedModel:
    """Load and validate one registry version of `pm` (blocking: call it off the event loop)."""
    return load_model(
        pm.registry.path(pm.name, version), pm.pipeline, name=pm.name, version=version, spec_file=pm.spec_file
    )


def _unpinned(pm: PlanModel) -> ConfigError:
    return ConfigError(
        f"tradeplan: model {pm.name} ({pm.spec_file}) has no pinned version and there is no database "
        "to ask for the serving one; add version = N to its models entry"
    )


async def serving_version(pm: PlanModel, dsn: str | None) -> int:
    """The pinned version, else the registry's serving one."""
    if pm.pinned is not None:
        return pm.pinned
    if dsn is None:
        raise _unpinned(pm)
    version = await pm.registry.serving(pm.name)
    if version is None:
        raise ConfigError(
            f"model {pm.name}: the registry has no version to serve; train one (`trader train {pm.spec_file}`) "
            "or pin version = N in the tradeplan"
        )
    return int(version)


async def load_plan_models(plan: Any, dsn: str | None, features_only: bool = False) -> list[PlanModel]:
    """Every model of the plan, at its pinned or serving version, loaded and validated (in a thread)."""
    models = plan_models(plan, dsn, features_only)
    for pm in models:
        version = await serving_version(pm, dsn)
        pm.loaded = await asyncio.to_thread(load_version, pm, version)
    return models


def load_plan_models_sync(plan: Any) -> list[PlanModel]:
    """Without a database (backtests, tests): every model must be pinned in the plan."""
    models = plan_models(plan, None)
    for pm in models:
        if pm.pinned is None:
            raise _unpinned(pm)
        pm.loaded = load_version(pm, pm.pinned)
    return models


def attach_models(runner: Any, models: list[PlanModel], sink: PredictionSink | None = None) -> ModelScorer:
    """Build the scorer as the runner's bar hook and give each strategy's Context its models."""
    scorer = ModelScorer(runner.routes, sink)
    for pm in models:
        assert pm.loaded is not None, "load the plan's models first"
        scorer.add(pm.loaded, pm.pipeline, strategies=pm.weights, pinned=pm.pinned)
    runner.bar_hooks.append(scorer)
    for label, slot in runner.slots.items():
        weights = {pm.name: pm.weights[label] for pm in models if label in pm.weights}
        if weights:
            slot.ctx.attach_models(scorer, weights)
    return scorer


class ModelWatcher:
    """Follows the registry's serving version of each unpinned model and swaps it in between two bars.

    `poll` runs in the consumer's housekeeping tick (every 250 ms). The registry NOTIFYs on every
    register/promote; the watcher LISTENs on one connection it keeps, so a tick without news costs
    nothing, and asks `Registry.serving` only for the models named in a notification, plus every
    `recheck` seconds for all of them (in case a notification was missed). A new version is loaded
    and validated in a thread while bars keep being scored by the old one, then swapped in plain
    code. A version that fails validation is refused once (logged); the old one keeps serving.
    """

    def __init__(
        self, scorer: ModelScorer, models: list[PlanModel], dsn: str | None, recheck: float = 5.0
    ) -> None:
        self.scorer = scorer
        self.models = {pm.name: pm for pm in models if pm.pinned is None}
        self.dsn = dsn
        self.recheck = recheck
        self._due: set[str] = set(self.models)
        self._next_all = 0.0
        self._conn: Any = None
        self._failing: set[str] = set()

    async def start(self) -> None:
        """LISTEN for registry changes (without it, the periodic recheck still finds them)."""
        if self.dsn is None or not self.models:
            return
        import asyncpg

        from liu.ml.registry import CHANNEL

        try:
            self._conn = await asyncpg.connect(self.dsn, timeout=5)
            await self._conn.add_listener(CHANNEL, self._notified)
        except Exception as e:  # noqa: BLE001
            log.warning(
                "model watcher: cannot LISTEN for promotions (%s); rechecking every %.0fs",
                _first_line(e),
                self.recheck,
            )
            await self.close()

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            name = json.loads(payload).get("name")
        except (ValueError, AttributeError):
            name = None
        if name is None:
            self._due.update(self.models)
        elif name in self.models:
            self._due.add(name)

    async def poll(self) -> None:
        if not self.models:
            return
        now = time.monotonic()
        if now >= self._next_all:
            self._next_all = now + self.recheck
            self._due.update(self.models)
        due, self._due = self._due, set()
        for name in due:
            await self._check(self.models[name])

    async def _check(self, pm: PlanModel) -> None:
        m = self.scorer.models[pm.name]
        conn = self._conn if self._conn is not None and not self._conn.is_closed() else None
        try:
            version = await pm.registry.serving(pm.name, conn)  # on the LISTEN connection when there is one
        except Exception as e:  # noqa: BLE001 - the registry being down must not stop trading
            if conn is not None:  # that connection is broken: rechecks go on with short connections
                await self.close()
            if pm.name not in self._failing:  # retried at the next recheck
                self._failing.add(pm.name)
                log.error(
                    "model %s: cannot ask the registry for the serving version (%s)", pm.name, _first_line(e)
                )
            return
        self._failing.discard(pm.name)
        if version is None or version == m.version or version in m.refused:
            return
        try:
            loaded = await asyncio.to_thread(load_version, pm, int(version))
            self.scorer.swap(pm.name, loaded)
        except ModelFileError as e:
            self.scorer.refuse(pm.name, int(version), str(e))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=2)
            except Exception:  # noqa: BLE001
                conn.terminate()
