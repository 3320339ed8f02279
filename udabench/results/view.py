"""What the store says, checked against the disk: every read goes through ``open_view``.

Each indexed row gets a status:

* ``finished``: its result.json is still there, unchanged since it was indexed, and it is the
  newest finished run of its (benchmark, spec hash, config hash, seed): the one result counted.
* ``superseded``: the same configuration and seed finished again later; listed, never averaged.
* ``missing``: the run directory or its result.json is gone (deleted, or the folder moved).
* ``changed``: result.json differs in size or modification time from what was indexed.

Missing and changed runs are left out of every table, with one notice line saying how many and
how to clean up. A store file that cannot be used (empty, not SQLite, older schema) or that lists
no runs while run directories exist is rebuilt from the run directories, with a notice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from udabench.errors import UserError
from udabench.results.store import (HOW_TO_RUN, REINDEXED, StoreUnusable, find_run_dirs, get_meta, read_rows,
                                    reindex, store_path)

FINISHED, SUPERSEDED, MISSING, CHANGED = "finished", "superseded", "missing", "changed"
STATUSES = (FINISHED, SUPERSEDED, MISSING, CHANGED)
CLEAN_UP = "`udabench runs --prune` drops the rows of gone runs, `udabench runs --reindex` rebuilds the store from disk"


@dataclass
class StoreView:
    """The rows of a store, each with its ``status``, and the notices reading them produced."""

    store: Path
    output_dir: Path
    rows: list[dict[str, Any]]
    notices: list[str] = field(default_factory=list)

    def having(self, *statuses: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] in statuses]

    @property
    def records(self) -> list[dict[str, Any]]:
        """The results that count: finished, present and not superseded."""
        return self.having(FINISHED)

    @property
    def gone(self) -> list[dict[str, Any]]:
        return self.having(MISSING, CHANGED)


def evidence_status(row: dict[str, Any]) -> str:
    """FINISHED when the row's result.json exists with the size and mtime it was indexed with."""
    try:
        st = os.stat(os.path.join(row["run_dir"], "result.json"))  # str join: this runs per row
    except OSError:
        return MISSING
    return FINISHED if (st.st_size, st.st_mtime_ns) == tuple(row["_evidence"]) else CHANGED


def newest_first_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return (str(record.get("finished") or ""), str(record["run_id"]), str(record.get("run_dir", "")))


def mark_superseded(rows: list[dict[str, Any]]) -> None:
    """One result per (benchmark, spec hash, config hash, seed): the newest finished run. (The
    config hash covers the method; the method is in the key too, for hand-made records.)"""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == FINISHED:
            key = (r["benchmark"], r["spec_hash"], r["method"], r["config_hash"], int(r["seed"]))
            groups.setdefault(key, []).append(r)
    for group in groups.values():
        group.sort(key=newest_first_key)
        for older in group[:-1]:
            older["status"] = SUPERSEDED
            older["superseded_by"] = group[-1]["run_id"]


def evidence_notice(rows: list[dict[str, Any]]) -> str | None:
    """One line for the runs left out because their evidence is gone or changed."""
    gone = sum(r["status"] == MISSING for r in rows)
    changed = sum(r["status"] == CHANGED for r in rows)
    if not gone and not changed:
        return None
    parts = []
    if gone:
        parts.append(f"{gone} indexed run(s) whose directory or result.json is gone")
    if changed:
        parts.append(f"{changed} whose result.json changed since it was indexed")
    return f"left out {' and '.join(parts)}: {CLEAN_UP}"


def check_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each stored row its status (evidence first, then superseded)."""
    for r in rows:
        r["status"] = evidence_status(r)
        r.pop("_evidence", None)
    mark_superseded(rows)
    return rows


def _rebuild(store: Path, out: Path, why: str, add: tuple[Path, ...] = ()) -> list[str]:
    try:
        summary = reindex(store, out, add)
    except UserError as exc:
        raise UserError(f"{why}; rebuilding it from the run directories failed: {exc}") from None
    folders = ", ".join(summary.folders) or str(out)
    lines = [f"indexed {summary.indexed} run(s) from {folders} into {store} ({why})"]
    lines += [f"skipped: {reason}" for reason in summary.skipped]
    lines += [f"remembered folder {f} no longer exists (forget it with `udabench runs --forget {f}`)"
              for f in summary.missing_folders]
    return lines


def open_view(output_dir: Path | str, benchmark: str | None = None, rebuild: bool = False,
              add: tuple[Path, ...] = ()) -> StoreView:
    """Read the store of ``output_dir`` and check every row against the disk; (re)build the
    store from the run directories on request, on first use, or when it cannot be used as it is."""
    out = Path(output_dir)
    store = store_path(out)
    notices: list[str] = []
    why = None
    if rebuild or add:
        why = "on request"
    elif not store.exists():
        if find_run_dirs(out):
            why = "no run store yet"
    else:
        try:
            rows = read_rows(store)
        except StoreUnusable as exc:
            why = str(exc)
        else:
            # An empty store that was never rebuilt (a 0-byte file, say) while run directories
            # exist is not "no runs"; one rebuilt from them that found none finished is.
            if not rows and get_meta(store, REINDEXED) is None and find_run_dirs(out):
                why = f"the run store {store} listed no runs but run directories exist"
    if why is not None:
        notices += _rebuild(store, out, why, add)
        rows = read_rows(store)
    elif not store.exists():
        rows = []
    check_rows(rows)
    if benchmark is not None:
        rows = [r for r in rows if r["benchmark"] == benchmark]
    line = evidence_notice(rows)
    if line:
        notices.append(line)
    return StoreView(store, out, rows, notices)


def no_runs_message(store: Path, benchmark: str | None = None) -> str:
    where = f" for benchmark {benchmark}" if benchmark else ""
    example = f"udabench run source-only --benchmark {benchmark}" if benchmark else HOW_TO_RUN
    return f"no finished runs{where} in the run store {store}; make one with: {example}"


def emit(notices: list[str], notify: Callable[[str], None] | None) -> None:
    """Hand notices to ``notify`` (the CLI prints them on stderr) or, by default, to ``warnings``."""
    if notify is None:
        import warnings

        for line in notices:
            warnings.warn(line, StoreNotice, stacklevel=3)
        return
    for line in notices:
        notify(line)


class StoreNotice(UserWarning):
    """Something the reader of a store should know (runs left out, store rebuilt)."""


def load_records(output_dir: Path | str, benchmark: str | None = None,
                 notify: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The results that count (finished, present, not superseded) of an output folder, oldest
    first: each is the run's result.json plus ``run_dir`` (where it is now), ``provenance``,
    ``settings`` (the run's method_config/train/model) and ``status``. ``output_dir`` may also
    name the store file itself."""
    output_dir = Path(output_dir)
    if output_dir.suffix == ".sqlite":
        output_dir = output_dir.parent
    view = open_view(output_dir, benchmark)
    emit(view.notices, notify)
    return view.records
