"""The run store: one SQLite file (``<output_dir>/store.sqlite``) indexing every finished run.

The run directories are the truth; the store is an index that ``reindex`` can always rebuild from
them. Each row remembers the size and modification time of the ``result.json`` it was read from,
so readers (``udabench.results.view``) can tell when a run's evidence has gone or changed. WAL
mode plus a busy timeout and ``BEGIN IMMEDIATE`` writes let several runs that finish at the same
moment (one process each) all land: writers queue instead of failing.
"""
from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from udabench.errors import DataError, UserError
from udabench.results.records import int_or_none, provenance, read_finished, val_set

STORE_NAME = "store.sqlite"
# 2: result.json size + mtime (evidence check), val_set, name/tags, settings, remembered folders.
SCHEMA_VERSION = 2
BUSY_TIMEOUT_S = 60.0
HOW_TO_RUN = "udabench run source-only --benchmark minicity-gta2cs"
SQLITE_MAGIC = b"SQLite format 3\x00"
REINDEXED = "reindexed_at"  # meta key: when the store was last rebuilt from the run directories

# One row per run directory. tags, subsets, miou, iou, provenance, settings and record hold JSON;
# result_size and result_mtime_ns are the evidence a reader checks the disk against.
_RUN_COLUMNS = (
    ("run_dir", "TEXT PRIMARY KEY"), ("run_id", "TEXT NOT NULL"), ("benchmark", "TEXT NOT NULL"),
    ("spec_hash", "TEXT NOT NULL"), ("val_set", "TEXT NOT NULL"), ("method", "TEXT NOT NULL"),
    ("config_hash", "TEXT NOT NULL"), ("seed", "INTEGER NOT NULL"), ("name", "TEXT"), ("tags", "TEXT NOT NULL"),
    ("uda", "INTEGER NOT NULL"), ("subsets", "TEXT NOT NULL"), ("headline", "TEXT NOT NULL"),
    ("headline_miou", "REAL"), ("miou", "TEXT NOT NULL"), ("iou", "TEXT NOT NULL"), ("convention", "TEXT"),
    ("eval_input", "TEXT"), ("network", "TEXT"), ("checkpoint", "TEXT"), ("iters", "INTEGER"),
    ("planned_iters", "INTEGER"), ("finished", "TEXT"), ("provenance", "TEXT NOT NULL"),
    ("settings", "TEXT NOT NULL"), ("train_seconds", "REAL"), ("wall_seconds", "REAL"), ("gpu_hours", "REAL"),
    ("peak_memory_bytes", "INTEGER"), ("images_per_second", "REAL"), ("device", "TEXT"),
    ("record", "TEXT NOT NULL"), ("result_size", "INTEGER NOT NULL"), ("result_mtime_ns", "INTEGER NOT NULL"),
    ("indexed_at", "REAL NOT NULL"),
)
_COLUMNS = tuple(name for name, _ in _RUN_COLUMNS)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs ({", ".join(f"{name} {kind}" for name, kind in _RUN_COLUMNS)});
CREATE INDEX IF NOT EXISTS runs_by_benchmark ON runs (benchmark, spec_hash, method, config_hash);
CREATE TABLE IF NOT EXISTS folders (path TEXT PRIMARY KEY, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# The parts of config.json whose differences make two configurations of one method differ.
SETTINGS_KEYS = ("method_config", "train", "model", "benchmark_overrides")

T = TypeVar("T")


def store_path(output_dir: Path | str) -> Path:
    """Where the store of an output folder lives."""
    return Path(output_dir) / STORE_NAME


class StoreUnusable(UserError):
    """The store file exists but cannot be used as it is (empty, foreign, older schema); the
    message says which. Only an index: callers rebuild it from the run directories."""


@dataclass
class IndexSummary:
    """What ``reindex`` did: runs indexed, run directories skipped (with the reason), folders
    scanned, and remembered folders that no longer exist."""

    indexed: int = 0
    skipped: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    missing_folders: list[str] = field(default_factory=list)


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


def _check_file(path: Path) -> None:
    """Refuse a file that is not SQLite. A 0-byte file is allowed: it is what a concurrent writer
    creating the store leaves for a moment, and SQLite treats it as an empty database (a reader
    that then finds no runs while run directories exist rebuilds the store)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"cannot read the run store {path} ({exc.strerror}); check its permissions") from None
    if head and head != SQLITE_MAGIC:
        raise StoreUnusable(f"the run store {path} is not an SQLite file")


def _connect(path: Path, create: bool = True) -> sqlite3.Connection:
    path = Path(path)
    _check_file(path)
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
    except sqlite3.DatabaseError as exc:  # damaged beyond the header
        con.close()
        raise StoreUnusable(f"the run store {path} is damaged ({exc})") from None
    return con


def _ensure_schema(con: sqlite3.Connection, path: Path) -> None:
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        raise StoreUnusable(f"the run store {path} has schema version {version}, this udabench "
                            f"reads version {SCHEMA_VERSION}")
    con.execute("BEGIN IMMEDIATE")
    try:
        if con.execute("PRAGMA user_version").fetchone()[0] == 0:  # another writer may have won
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


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


class _Open:
    """``with _Open(store) as con``: a connection closed on exit."""

    def __init__(self, store: Path | str, create: bool = True):
        self.con = _connect(Path(store), create)

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc: object) -> None:
        self.con.close()


# --- one run directory as a row -------------------------------------------------------------


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _row(run_dir: Path, record: dict[str, Any], config: dict[str, Any], stat: os.stat_result) -> tuple:
    ev, compute = record.get("eval") or {}, record.get("compute") or {}
    subsets = [str(s) for s in record["subsets"]]
    headline = str(record.get("headline") or subsets[0])
    size = ev.get("input_size")
    tags = record.get("tags") or []
    settings = {k: config.get(k, record.get(k)) or {} for k in SETTINGS_KEYS}
    values = {
        "run_dir": str(run_dir), "run_id": str(record["run_id"]), "benchmark": str(record["benchmark"]),
        "spec_hash": str(record["spec_hash"]), "val_set": val_set(record), "method": str(record["method"]),
        "config_hash": str(record["config_hash"]), "seed": int(record["seed"]),
        "name": str(record["name"]) if record.get("name") else None,
        "tags": json.dumps([str(t) for t in tags] if isinstance(tags, list) else [str(tags)]),
        "uda": int(bool(record.get("uda", True))), "subsets": json.dumps(subsets), "headline": headline,
        "headline_miou": _num(record["miou"].get(headline)), "miou": json.dumps(record["miou"]),
        "iou": json.dumps(record["iou"]), "convention": record.get("convention"),
        "eval_input": "x".join(str(s) for s in size) if size else None,
        "network": ev.get("network"), "checkpoint": ev.get("checkpoint"),
        "iters": int_or_none(record.get("iters")), "planned_iters": int_or_none(record.get("planned_iters")),
        "finished": record.get("finished"), "provenance": json.dumps(provenance(run_dir)),
        "settings": json.dumps(settings, sort_keys=True, default=str),
        "train_seconds": _num(compute.get("train_seconds")), "wall_seconds": _num(compute.get("wall_seconds")),
        "gpu_hours": _num(compute.get("gpu_hours")), "peak_memory_bytes": _num(compute.get("peak_memory_bytes")),
        "images_per_second": _num(compute.get("images_per_second")), "device": compute.get("device"),
        "record": json.dumps(record, sort_keys=True), "result_size": stat.st_size,
        "result_mtime_ns": stat.st_mtime_ns, "indexed_at": time.time(),
    }
    return tuple(values[c] for c in _COLUMNS)


def read_run(run_dir: Path | str) -> tuple:
    """The store row of one finished run directory; DataError (one line) when it is not one."""
    run_dir = Path(run_dir).resolve()
    return _row(run_dir, *read_finished(run_dir))


_UPSERT = (f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)})")


# --- writing ----------------------------------------------------------------------------------


def index_run(store: Path | str, run_dir: Path | str) -> dict[str, Any]:
    """Add (or refresh) one finished run; keyed by its resolved directory, so repeating is harmless.

    A directory that is not a finished result raises a DataError saying why. A store file that
    cannot be used (empty, foreign, older schema) is rebuilt from its output folder first: it is
    only an index, and a run that took hours must not fail on it.
    """
    row = read_run(run_dir)
    try:
        con = _connect(Path(store))
    except StoreUnusable:
        reindex(store, Path(store).parent)
        con = _connect(Path(store))
    try:
        _write(con, lambda: con.execute(_UPSERT, row))
    finally:
        con.close()
    return json.loads(row[_COLUMNS.index("record")])


def find_run_dirs(folder: Path | str) -> list[Path]:
    """Run directories at any depth below ``folder``: every folder holding a result.json (a run
    directory is not searched further; symlinks are not followed, hidden folders skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        if "result.json" in files:
            found.append(Path(root))
            dirs[:] = []
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found)


def remembered_folders(store: Path | str) -> list[str]:
    """Folders outside the output folder that ``reindex`` also scans (``runs --add DIR``)."""
    if not Path(store).exists():
        return []
    try:
        with _Open(store, create=False) as con:
            return [r[0] for r in _retry(lambda: con.execute("SELECT path FROM folders ORDER BY path").fetchall())]
    except StoreUnusable:
        return []


def forget_folder(store: Path | str, folder: Path | str) -> bool:
    """Stop scanning a remembered folder; True when it was remembered."""
    path = str(Path(folder).resolve())
    with _Open(store) as con:
        known = con.execute("SELECT 1 FROM folders WHERE path = ?", (path,)).fetchone() is not None
        _write(con, lambda: con.execute("DELETE FROM folders WHERE path = ?", (path,)))
    return known


def _scan(folders: Iterable[Path], summary: IndexSummary) -> Iterator[tuple]:
    seen: set[str] = set()
    for folder in folders:
        for run_dir in find_run_dirs(folder):
            resolved = run_dir.resolve()
            if str(resolved) in seen:  # nested or repeated folders: each run directory once
                continue
            seen.add(str(resolved))
            try:
                yield read_run(resolved)
            except DataError as exc:
                summary.skipped.append(str(exc))


def reindex(store: Path | str, output_dir: Path | str, add: Iterable[Path | str] = ()) -> IndexSummary:
    """Rebuild the store from every run directory below ``output_dir``, below the folders it
    remembers, and below ``add`` (remembered from now on). Rows of directories no longer found
    are dropped; an unusable store file is replaced (it is only an index)."""
    store = Path(store)
    summary = IndexSummary()
    extra = [Path(a).resolve() for a in add]
    for folder in extra:
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; --add takes a folder holding run directories")
    remembered = [Path(p) for p in remembered_folders(store)]
    summary.missing_folders = [str(p) for p in remembered if not p.is_dir()]
    folders = [Path(output_dir).resolve(), *extra, *[p for p in remembered if p.is_dir()]]
    summary.folders = list(dict.fromkeys(str(f) for f in folders if f.is_dir()))
    rows = list(_scan([Path(f) for f in summary.folders], summary))
    try:
        con = _connect(store)
    except StoreUnusable:
        for suffix in ("", "-wal", "-shm"):
            Path(str(store) + suffix).unlink(missing_ok=True)
        con = _connect(store)
    try:
        def rebuild() -> None:
            con.execute("DELETE FROM runs")
            con.executemany(_UPSERT, rows)
            con.executemany("INSERT OR REPLACE INTO folders (path, added_at) VALUES (?, ?)",
                            [(str(p), time.time()) for p in extra])
            for p in remembered:  # a remembered folder survives a rebuild of an unusable file
                con.execute("INSERT OR IGNORE INTO folders (path, added_at) VALUES (?, ?)", (str(p), time.time()))
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (REINDEXED, str(time.time())))

        _write(con, rebuild)
    finally:
        con.close()
    summary.indexed = len(rows)
    return summary


def delete_rows(store: Path | str, run_dirs: Iterable[str]) -> int:
    """Remove the rows of these run directories (``runs --prune``); returns how many went."""
    dirs = list(run_dirs)
    if not dirs:
        return 0
    with _Open(store) as con:
        before = con.total_changes
        _write(con, lambda: con.executemany("DELETE FROM runs WHERE run_dir = ?", [(d,) for d in dirs]))
        return con.total_changes - before


# --- reading ----------------------------------------------------------------------------------


def read_rows(store: Path | str, benchmark: str | None = None) -> list[dict[str, Any]]:
    """Every indexed row (optionally of one benchmark), oldest first, as the stored record plus
    ``run_dir`` (where it was indexed), ``provenance``, ``settings`` and ``_evidence`` (result.json
    size and mtime_ns when indexed). A store that does not exist holds no rows; an unusable one
    raises StoreUnusable. The evidence check lives in ``udabench.results.view``."""
    store = Path(store)
    if not store.exists():
        return []
    query = "SELECT run_dir, provenance, settings, record, result_size, result_mtime_ns FROM runs"
    args: tuple = ()
    if benchmark is not None:
        query, args = query + " WHERE benchmark = ?", (benchmark,)
    with _Open(store, create=False) as con:
        rows = _retry(lambda: con.execute(query + " ORDER BY finished, run_id", args).fetchall())
    out = []
    for run_dir, env, settings, record, size, mtime_ns in rows:
        rec = json.loads(record)
        rec.update(run_dir=run_dir, provenance=json.loads(env), settings=json.loads(settings),
                   _evidence=(size, mtime_ns))
        out.append(rec)
    return out


def get_meta(store: Path | str, key: str) -> str | None:
    if not Path(store).exists():
        return None
    with _Open(store, create=False) as con:
        row = _retry(lambda: con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
    return row[0] if row else None


def set_meta(store: Path | str, key: str, value: str) -> None:
    with _Open(store) as con:
        _write(con, lambda: con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)))
