"""The run store: one SQLite file (``<output_dir>/store.sqlite``) indexing every finished run.

The run directories are the truth; the store is an index that ``reindex`` can always rebuild from
them. WAL mode plus a busy timeout and ``BEGIN IMMEDIATE`` writes let several runs that finish at
the same moment (one process each) all land: writers queue instead of failing.
"""
from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from udabench.errors import DataError, UserError

STORE_NAME = "store.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
REQUIRED_KEYS = ("run_id", "method", "benchmark", "spec_hash", "config_hash", "seed", "subsets",
                 "miou", "iou")
HOW_TO_RUN = "udabench run source-only --benchmark minicity-gta2cs"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_dir TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    benchmark TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    method TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    uda INTEGER NOT NULL,
    subsets TEXT NOT NULL,
    headline TEXT NOT NULL,
    headline_miou REAL,
    miou TEXT NOT NULL,
    iou TEXT NOT NULL,
    convention TEXT,
    eval_input TEXT,
    network TEXT,
    checkpoint TEXT,
    iters INTEGER,
    finished TEXT,
    provenance TEXT NOT NULL,
    train_seconds REAL,
    wall_seconds REAL,
    gpu_hours REAL,
    peak_memory_bytes INTEGER,
    images_per_second REAL,
    device TEXT,
    record TEXT NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_benchmark ON runs (benchmark, spec_hash, method, config_hash);
"""
_COLUMNS = ("run_dir", "run_id", "benchmark", "spec_hash", "method", "config_hash", "seed", "uda",
            "subsets", "headline", "headline_miou", "miou", "iou", "convention", "eval_input",
            "network", "checkpoint", "iters", "finished", "provenance", "train_seconds",
            "wall_seconds", "gpu_hours", "peak_memory_bytes", "images_per_second", "device",
            "record", "indexed_at")
# Provenance copied from env.json next to result.json (versions, revision, hardware).
_PROVENANCE_KEYS = ("udabench", "git", "python", "torch", "torchvision", "timm", "numpy", "platform",
                    "device", "gpu", "cuda", "world_size")

T = TypeVar("T")


def store_path(output_dir: Path | str) -> Path:
    """Where the store of an output folder lives."""
    return Path(output_dir) / STORE_NAME


@dataclass
class IndexSummary:
    """What ``reindex`` did: runs indexed and run directories skipped (with the reason)."""

    indexed: int = 0
    skipped: list[str] = field(default_factory=list)


def _retry(fn: Callable[[], T], deadline_s: float = BUSY_TIMEOUT_S) -> T:
    """Retry on 'locked'/'busy': sqlite's busy handler does not cover every WAL race (e.g. two
    connections switching a brand-new file to WAL at once)."""
    end = time.monotonic() + deadline_s
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > end:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.25)


def _connect(path: Path, create: bool = True) -> sqlite3.Connection:
    path = Path(path)
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the write
        # lock up front and never deadlocks upgrading a read transaction.
        con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except (OSError, sqlite3.OperationalError) as exc:
        raise UserError(f"cannot open the run store {path} ({exc}); check the folder exists and is writable") from None
    try:
        con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _retry(lambda: con.execute("PRAGMA journal_mode=WAL").fetchone())
        con.execute("PRAGMA synchronous=NORMAL")
        _retry(lambda: _ensure_schema(con, path))
    except UserError:
        con.close()
        raise
    except sqlite3.OperationalError as exc:  # locked for too long, read-only folder, disk full...
        con.close()
        raise UserError(f"cannot use the run store {path} ({exc}); check it is writable and retry") from None
    except sqlite3.DatabaseError as exc:  # not an SQLite file at all
        con.close()
        raise UserError(f"{path} is not a udabench run store ({exc}); rebuild it with `udabench runs --reindex`") from None
    return con


def _ensure_schema(con: sqlite3.Connection, path: Path) -> None:
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version not in (0, SCHEMA_VERSION):
        raise UserError(
            f"the run store {path} has schema version {version}, this udabench writes {SCHEMA_VERSION}; "
            "rebuild it with `udabench runs --reindex`"
        )
    con.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                con.execute(statement)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _read_result(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "result.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; only finished runs (with result.json) can be indexed") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object written by `udabench run`")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise DataError(f"{path}: missing key '{key}'; expected a result.json written by `udabench run`")
    if not isinstance(record["miou"], dict) or not isinstance(record["iou"], dict):
        raise DataError(f"{path}: 'miou' and 'iou' must be objects (subset/class -> value in %)")
    if not isinstance(record["subsets"], list) or not record["subsets"]:
        raise DataError(f"{path}: 'subsets' must be a non-empty list like [\"19\"]")
    return record


def _provenance(run_dir: Path) -> dict[str, Any]:
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return {k: env[k] for k in _PROVENANCE_KEYS if isinstance(env, dict) and k in env}


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _row(run_dir: Path, record: dict[str, Any]) -> tuple:
    ev, compute = record.get("eval") or {}, record.get("compute") or {}
    subsets = [str(s) for s in record["subsets"]]
    headline = str(record.get("headline") or subsets[0])
    size = ev.get("input_size")
    values = {
        "run_dir": str(run_dir),
        "run_id": str(record["run_id"]),
        "benchmark": str(record["benchmark"]),
        "spec_hash": str(record["spec_hash"]),
        "method": str(record["method"]),
        "config_hash": str(record["config_hash"]),
        "seed": int(record["seed"]),
        "uda": int(bool(record.get("uda", True))),
        "subsets": json.dumps(subsets),
        "headline": headline,
        "headline_miou": _num(record["miou"].get(headline)),
        "miou": json.dumps(record["miou"]),
        "iou": json.dumps(record["iou"]),
        "convention": record.get("convention"),
        "eval_input": "x".join(str(s) for s in size) if size else None,
        "network": ev.get("network"),
        "checkpoint": ev.get("checkpoint"),
        "iters": record.get("iters"),
        "finished": record.get("finished"),
        "provenance": json.dumps(_provenance(run_dir)),
        "train_seconds": _num(compute.get("train_seconds")),
        "wall_seconds": _num(compute.get("wall_seconds")),
        "gpu_hours": _num(compute.get("gpu_hours")),
        "peak_memory_bytes": compute.get("peak_memory_bytes"),
        "images_per_second": _num(compute.get("images_per_second")),
        "device": compute.get("device"),
        "record": json.dumps(record, sort_keys=True),
        "indexed_at": time.time(),
    }
    return tuple(values[c] for c in _COLUMNS)


_UPSERT = (f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)})")


def _write(con: sqlite3.Connection, fn: Callable[[], None]) -> None:
    def attempt() -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            fn()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    try:
        _retry(attempt)
    except sqlite3.OperationalError as exc:
        raise UserError(f"cannot write the run store ({exc}); check it is writable and retry") from None


def index_run(store: Path | str, run_dir: Path | str) -> dict[str, Any]:
    """Add (or refresh) one finished run; keyed by its resolved directory, so repeating is harmless."""
    run_dir = Path(run_dir).resolve()
    record = _read_result(run_dir)
    row = _row(run_dir, record)
    con = _connect(Path(store))
    try:
        _write(con, lambda: con.execute(_UPSERT, row))
    finally:
        con.close()
    return record


def find_run_dirs(output_dir: Path | str) -> list[Path]:
    """Finished run directories of an output folder: ``<benchmark>/<method>/<run-id>/result.json``."""
    return sorted(p.parent for p in Path(output_dir).glob("*/*/*/result.json"))


def reindex(store: Path | str, output_dir: Path | str) -> IndexSummary:
    """Rebuild the store from every run directory below ``output_dir`` (stale rows are dropped)."""
    store = Path(store)
    summary = IndexSummary()
    rows = []
    for run_dir in find_run_dirs(output_dir):
        try:
            rows.append(_row(run_dir.resolve(), _read_result(run_dir)))
        except DataError as exc:
            summary.skipped.append(str(exc))
    try:
        con = _connect(store)
    except UserError:
        # An unreadable or foreign-version file is only an index: start it afresh.
        for suffix in ("", "-wal", "-shm"):
            Path(str(store) + suffix).unlink(missing_ok=True)
        con = _connect(store)
    try:
        def rebuild() -> None:
            con.execute("DELETE FROM runs")
            con.executemany(_UPSERT, rows)

        _write(con, rebuild)
    finally:
        con.close()
    summary.indexed = len(rows)
    return summary


def load_records(store: Path | str, benchmark: str | None = None) -> list[dict[str, Any]]:
    """Every indexed result record (optionally of one benchmark), oldest first.

    Each record is the run's result.json plus ``run_dir`` (where it is now) and ``provenance``.
    A store that does not exist yet holds no records.
    """
    store = Path(store)
    if not store.exists():
        return []
    con = _connect(store, create=False)
    try:
        query = "SELECT run_dir, provenance, record FROM runs"
        args: tuple = ()
        if benchmark is not None:
            query, args = query + " WHERE benchmark = ?", (benchmark,)
        rows = _retry(lambda: con.execute(query + " ORDER BY finished, run_id", args).fetchall())
    finally:
        con.close()
    out = []
    for run_dir, provenance, record in rows:
        rec = json.loads(record)
        rec["run_dir"] = run_dir
        rec["provenance"] = json.loads(provenance)
        out.append(rec)
    return out
