"""Model registry: ONNX files in a directory, one `models` row per kept version in PostgreSQL.

Layout: ``root/NAME/vN/model.onnx`` (+ ``spec.toml``, the spec it was trained from). Version numbers come
from `model_names.last_version`, so they never repeat even after pruning. The registry keeps the best K
versions by the spec's metric, plus the promoted version that is serving (deleting the model the consumers
run would break them), and marks exactly one row `is_best`.

Serving rule: the most recently promoted version if any version was ever promoted, else the best.
Every change sends ``NOTIFY liu_models, '{"name": ..., "serving": N}'`` so running consumers can reload.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import asyncpg

from liu.errors import ConfigError
from liu.ml.pipeline import spec_hash
from liu.ml.spec import ModelSpec
from liu.store.db import connection

CHANNEL = "liu_models"
_SERVING_SQL = """
SELECT version FROM models WHERE name = $1
ORDER BY promoted_at IS NULL, promoted_at DESC, is_best DESC, version DESC
LIMIT 1
"""


def _parse_meta(meta: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def _with_version(onnx_bytes: bytes, version: int) -> tuple[bytes, dict[str, str]]:
    """The model with metadata "liu.version" set to `version` (the number is known only now)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    props = [p for p in model.metadata_props if p.key != "liu.version"]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    prop = model.metadata_props.add()
    prop.key, prop.value = "liu.version", str(version)
    return model.SerializeToString(), {p.key: p.value for p in model.metadata_props}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _rank_key(metric_value: float, higher_is_better: bool, version: int) -> tuple[float, int]:
    """Sort key, best first: NaN metrics rank last, ties go to the newer version."""
    if metric_value is None or math.isnan(metric_value):
        return (math.inf, -version)
    return (-metric_value if higher_is_better else metric_value, -version)


class Registry:
    """Stores, ranks, lists and promotes model versions (files under `root`, rows in `dsn`)."""

    def __init__(self, root: Path, dsn: str) -> None:
        self.root = Path(root)
        self.dsn = dsn

    def path(self, name: str, version: int) -> Path:
        return self.root / name / f"v{version}" / "model.onnx"

    async def register(self, spec: ModelSpec, onnx_bytes: bytes, metrics: dict, metric_value: float) -> int:
        """Store a new version; returns its number. It may be pruned at once if it is not in the best K."""
        name = spec.name
        pruned: list[Path] = []
        async with connection(self.dsn, jsonb=True) as conn:
            async with conn.transaction():
                # Upsert + RETURNING locks the name's row: concurrent registers of one model serialize here.
                version = await conn.fetchval(
                    "INSERT INTO model_names (name, last_version) VALUES ($1, 1) "
                    "ON CONFLICT (name) DO UPDATE SET last_version = model_names.last_version + 1 "
                    "RETURNING last_version",
                    name,
                )
                data, meta = _with_version(onnx_bytes, version)
                path = self.path(name, version)
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    _write_atomic(path, data)
                    if spec.file is not None and Path(spec.file).exists():
                        shutil.copyfile(spec.file, path.parent / "spec.toml")
                    else:
                        (path.parent / "spec.json").write_text(spec.model_dump_json(indent=2))
                    width = int(meta.get("liu.input_width", len(spec.features)))
                    await conn.execute(
                        "INSERT INTO models (name, version, path, spec_hash, input_width, metric_name, "
                        "metric_value, metrics, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        name,
                        version,
                        str(path.resolve()),
                        spec_hash(spec),
                        width,
                        spec.registry.metric,
                        float(metric_value),
                        metrics,
                        _parse_meta(meta),
                    )
                except BaseException:
                    shutil.rmtree(path.parent, ignore_errors=True)
                    raise
                pruned = await self._prune(conn, name, spec.registry.keep, spec.registry.higher_is_better)
                await self._notify(conn, name)
        for p in pruned:
            shutil.rmtree(p.parent, ignore_errors=True)
        return version

    async def _prune(self, conn: asyncpg.Connection, name: str, keep: int, higher: bool) -> list[Path]:
        rows = await conn.fetch(
            "SELECT version, metric_value, path, promoted_at FROM models WHERE name = $1 FOR UPDATE", name
        )
        ranked = sorted(rows, key=lambda r: _rank_key(r["metric_value"], higher, r["version"]))
        kept = {r["version"] for r in ranked[:keep]}
        promoted = [r for r in rows if r["promoted_at"] is not None]
        if promoted:  # never delete the version consumers were told to run
            kept.add(max(promoted, key=lambda r: r["promoted_at"])["version"])
        gone = [r for r in rows if r["version"] not in kept]
        if gone:
            await conn.execute(
                "DELETE FROM models WHERE name = $1 AND version = ANY($2::int[])",
                name,
                [r["version"] for r in gone],
            )
        best = ranked[0]["version"]
        await conn.execute("UPDATE models SET is_best = (version = $2) WHERE name = $1", name, best)
        return [Path(r["path"]) for r in gone]

    async def _notify(self, conn: asyncpg.Connection, name: str) -> None:
        serving = await conn.fetchval(_SERVING_SQL, name)
        await conn.execute(
            "SELECT pg_notify($1, $2)", CHANNEL, json.dumps({"name": name, "serving": serving})
        )

    async def list(self, name: str | None = None) -> list[dict]:
        """Kept versions (all models, or one), oldest first, each row as a dict (+ "serving": bool)."""
        async with connection(self.dsn, jsonb=True) as conn:
            if name is None:
                rows = await conn.fetch("SELECT * FROM models ORDER BY name, version")
            else:
                rows = await conn.fetch("SELECT * FROM models WHERE name = $1 ORDER BY version", name)
            serving = {}
            for n in {r["name"] for r in rows}:
                serving[n] = await conn.fetchval(_SERVING_SQL, n)
        return [{**dict(r), "serving": serving.get(r["name"]) == r["version"]} for r in rows]

    async def serving(self, name: str, conn: asyncpg.Connection | None = None) -> int | None:
        """The version consumers should run: the most recently promoted one, else the best; None if none.

        `conn`: an open connection to ask on (the model watcher's own); else a short one is opened.
        """
        if conn is not None:
            return await conn.fetchval(_SERVING_SQL, name)
        async with connection(self.dsn) as conn:
            return await conn.fetchval(_SERVING_SQL, name)

    async def promote(self, name: str, version: int) -> None:
        """Make `version` the serving one (recorded as promoted now)."""
        async with connection(self.dsn) as conn:
            async with conn.transaction():
                done = await conn.execute(
                    "UPDATE models SET promoted_at = clock_timestamp() WHERE name = $1 AND version = $2",
                    name,
                    version,
                )
                if done.endswith(" 0"):
                    versions = [
                        r["version"]
                        for r in await conn.fetch(
                            "SELECT version FROM models WHERE name = $1 ORDER BY version", name
                        )
                    ]
                    if not versions:
                        names = [
                            r["name"]
                            for r in await conn.fetch("SELECT DISTINCT name FROM models ORDER BY name")
                        ]
                        raise ConfigError(f"model {name!r} is not in the registry (models: {names})")
                    raise ConfigError(f"model {name!r} has no version {version} (kept versions: {versions})")
                await self._notify(conn, name)
