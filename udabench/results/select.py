"""Which runs a word on the command line names: a run directory, a run id, a run name, a method
name, or a config hash prefix (at least 6 characters, as the leaderboard prints them).

A name, method or prefix stands for one *configuration*: every seed of one (benchmark, spec hash,
validation set, config hash) among the results that count. When it fits several, the caller gets
a one-line refusal listing them and how to choose: udabench never guesses which one was meant.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udabench.errors import UserError
from udabench.results.records import read_config, read_result, unfinished_reason, val_set
from udabench.results.view import CHANGED, FINISHED, MISSING, SUPERSEDED, StoreView

MIN_PREFIX = 6
GroupKey = tuple[str, str, str, str]  # benchmark, spec hash, validation set, config hash


def group_key(record: dict[str, Any]) -> GroupKey:
    return (record["benchmark"], record["spec_hash"], val_set(record), record["config_hash"])


@dataclass
class Side:
    """The runs (one per seed) of one configuration, or one run, that a word names."""

    label: str
    records: list[dict[str, Any]]
    by: str  # "run" (a run id or directory) or "config" (every seed of one configuration)

    @property
    def method(self) -> str:
        return self.records[0]["method"]

    @property
    def benchmark(self) -> str:
        return self.records[0]["benchmark"]

    @property
    def spec_hash(self) -> str:
        return self.records[0]["spec_hash"]

    @property
    def val_set(self) -> str:
        return group_key(self.records[0])[2]

    @property
    def config_hash(self) -> str:
        return self.records[0]["config_hash"]

    @property
    def seeds(self) -> list[int]:
        return [int(r["seed"]) for r in self.records]

    @property
    def name(self) -> str | None:
        names = {r.get("name") for r in self.records}
        return names.pop() if len(names) == 1 else None


def describe_config(records: list[dict[str, Any]]) -> str:
    """'3120c03d (3 seeds, 300 iters, name advent)': how a configuration is listed."""
    first = records[0]
    iters = "/".join(sorted({str(r.get("iters", "?")) for r in records}))
    names = sorted({str(r["name"]) for r in records if r.get("name")})
    seeds = f"{len(records)} seed{'s' if len(records) != 1 else ''}"
    extra = f", name {'/'.join(names)}" if names else ""
    return f"{first['config_hash'][:8]} ({seeds}, {iters} iters{extra})"


def groups_of(records: list[dict[str, Any]]) -> dict[GroupKey, list[dict[str, Any]]]:
    out: dict[GroupKey, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(group_key(r), []).append(r)
    for group in out.values():
        group.sort(key=lambda r: int(r["seed"]))
    return out


def _from_directory(path: Path, view: StoreView) -> Side:
    """A run directory named on the command line: read from disk (the truth), checked finished."""
    resolved = path.resolve()
    if not (resolved / "result.json").is_file():
        raise UserError(f"{path} is not a finished run directory (no result.json in it)")
    record = read_result(resolved)
    try:
        config = read_config(resolved)
    except UserError:
        config = {}
    reason = unfinished_reason(record, config)
    if reason is not None:
        raise UserError(f"{path} is not a finished result ({reason})")
    stored = next((r for r in view.rows if r["run_dir"] == str(resolved)), {})
    record = {**record, "run_dir": str(resolved), "status": stored.get("status", FINISHED),
              "settings": stored.get("settings", {})}
    return Side(str(record["run_id"]), [record], "run")


def _by_run_id(token: str, view: StoreView) -> Side | None:
    rows = [r for r in view.rows if r["run_id"] == token]
    if not rows:
        return None
    present = [r for r in rows if r["status"] in (FINISHED, SUPERSEDED)]
    if len(present) == 1:
        return Side(token, present, "run")
    if len(present) > 1:
        dirs = ", ".join(r["run_dir"] for r in present)
        raise UserError(f"run id '{token}' names {len(present)} runs ({dirs}); pass the run directory instead")
    row = rows[0]
    if row["status"] == CHANGED:
        raise UserError(f"run {token} changed on disk since it was indexed ({row['run_dir']}/result.json); "
                        "read it again with `udabench runs --reindex`")
    raise UserError(f"run {token} is gone: {row['run_dir']} no longer holds its result.json "
                    "(`udabench runs --prune` drops its row; `--reindex` finds moved runs)")


def matching(token: str, view: StoreView, benchmark: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """(results, is_one_run): the results that count named by a run name, method name or config
    hash prefix (any number of configurations), or the one run a run id or directory names."""
    if Path(token).is_dir():
        return _from_directory(Path(token), view).records, True
    side = _by_run_id(token, view)
    if side is not None:
        return side.records, True
    scope = [r for r in view.records if benchmark is None or r["benchmark"] == benchmark]
    found = [r for r in scope if token in (r.get("name"), r["method"])
             or (len(token) >= MIN_PREFIX and r["config_hash"].startswith(token))]
    if not found:
        _unknown(token, view, scope, benchmark)
    return found, False


def _unknown(token: str, view: StoreView, scope: list[dict[str, Any]], benchmark: str | None) -> None:
    where = f" on {benchmark}" if benchmark else ""
    gone = [r for r in view.having(MISSING, CHANGED)
            if token in (r["method"], r.get("name")) or r["config_hash"].startswith(token)]
    if gone:
        raise UserError(f"'{token}' names only runs that are gone or changed on disk ({len(gone)}); "
                        "`udabench runs --status missing` lists them, `udabench runs --reindex` finds moved runs")
    short = [r for r in scope if len(token) < MIN_PREFIX and r["config_hash"].startswith(token)]
    if short:
        raise UserError(f"config hash prefix '{token}' is too short; give at least {MIN_PREFIX} characters")
    known = sorted({r["method"] for r in scope})
    raise UserError(f"unknown method or run '{token}'; methods with finished runs{where}: "
                    f"{', '.join(known) or 'none'} (or give a run name, config hash prefix, run id or run directory)")


def resolve(token: str, view: StoreView, benchmark: str | None = None,
            like: Side | None = None) -> Side:
    """The one configuration (or run) ``token`` names. ``like``: the other side of a comparison;
    configurations on its benchmark, spec hash and validation set are preferred."""
    records, one_run = matching(token, view, benchmark)
    groups = groups_of(records)
    if len(groups) > 1 and like is not None:
        same = {k: g for k, g in groups.items() if k[:3] == (like.benchmark, like.spec_hash, like.val_set)}
        groups = same or groups
    if len(groups) == 1:
        return Side(token, next(iter(groups.values())), "run" if one_run else "config")
    benches = sorted({k[0] for k in groups})
    if len(benches) > 1:
        raise UserError(f"'{token}' has runs on {len(benches)} benchmarks ({', '.join(benches)}); "
                        "choose one with --benchmark")
    listing = "; ".join(describe_config(g) + _protocol_suffix(k, groups) for k, g in groups.items())
    example = next(iter(groups))[3][:8]
    raise UserError(f"'{token}' names {len(groups)} configurations on {benches[0]}: {listing}; choose one "
                    f"by config hash prefix (e.g. {example}), run name or run id")


def _protocol_suffix(key: GroupKey, groups: dict[GroupKey, list[dict[str, Any]]]) -> str:
    """' [spec X, val Y]' when configurations also differ in protocol or validation set."""
    specs = {k[1] for k in groups}
    vals = {k[2] for k in groups}
    parts = ([f"spec {key[1]}"] if len(specs) > 1 else []) + ([f"val {key[2]}"] if len(vals) > 1 else [])
    return f" [{', '.join(parts)}]" if parts else ""
