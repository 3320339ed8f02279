"""``udabench runs``, ``udabench leaderboard`` and ``udabench compare``: read the run store.

These listing commands never import torch: the store, the tables and the bootstrap are pandas
and numpy, and benchmark names/spec hashes come from ``udabench.results.specs``'s cache.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from udabench.errors import UserError

console = Console()
notices = Console(stderr=True)  # keeps stdout clean for --format csv/json

_store_options = [
    click.option("--output-dir", "output_dir", type=click.Path(path_type=Path),
                 help="folder holding the run directories and store.sqlite (default: paths.output_dir)"),
    click.option("--config", "config_file", type=click.Path(path_type=Path),
                 help="settings file (default ./udabench.toml)"),
]


def store_options(fn):
    for option in reversed(_store_options):
        fn = option(fn)
    return fn


def _output_dir(output_dir: Path | None, config_file: Path | None) -> Path:
    if output_dir is None:
        from udabench.config import load_config

        output_dir = load_config(config_file).paths.output_dir
    return Path(output_dir)


def notify(line: str) -> None:
    style = "yellow" if line.startswith(("left out", "skipped", "remembered")) else "dim"
    notices.print(Text(line, style=style), soft_wrap=True)


def open_store(output_dir: Path | None, config_file: Path | None, benchmark: str | None = None,
               rebuild: bool = False, add: tuple[Path, ...] = ()) -> Any:
    """The store view (udabench.results.view.StoreView) of the output folder, notices printed,
    ``benchmark`` checked and applied."""
    from udabench.results.view import open_view

    view = open_view(_output_dir(output_dir, config_file), benchmark, rebuild, add)
    for line in view.notices:
        notify(line)
    if benchmark is not None and not view.rows:
        _check_benchmark(benchmark, view.store)
    return view


def _check_benchmark(benchmark: str, store: Path) -> None:
    from udabench.registry import did_you_mean
    from udabench.results.aggregate import reported_benchmarks
    from udabench.results.specs import current_specs

    known = sorted(set(current_specs(store)) | set(reported_benchmarks()))
    if benchmark not in known:
        raise UserError(f"unknown benchmark '{benchmark}'{did_you_mean(benchmark, known)}; known: {', '.join(known)}")


def _note_foreign_specs(boards: list[Any], store: Path) -> None:
    """Say when a table's spec hash is not the benchmark's current definition (overrides, old versions)."""
    from udabench.results.specs import current_specs

    if not any(board.spec_hash for board in boards):  # published rows alone carry no spec hash
        return
    specs = current_specs(store)
    for board in boards:
        current = specs.get(board.benchmark)
        if board.spec_hash and current and current != board.spec_hash:
            board.notes.append(f"spec {board.spec_hash} is not the current {board.benchmark} definition "
                               f"({current}): runs with [benchmarks] overrides or an older udabench")


def _duration(seconds: Any) -> str:
    from udabench.results.columns import duration

    return duration(seconds if isinstance(seconds, (int, float)) else None)


def _label(record: dict[str, Any]) -> str:
    """A run's user-given identity: its name and tags."""
    tags = record.get("tags") or []
    return (record.get("name") or "-") + (f" [{', '.join(map(str, tags))}]" if tags else "")


# --- runs ---------------------------------------------------------------------------------------

_SHOWN_BY_DEFAULT = ("finished", "superseded")


def _run_json(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "run_dir", "status", "superseded_by", "benchmark", "spec_hash", "method", "config_hash",
            "seed", "name", "tags", "uda", "subsets", "miou", "iters", "planned_iters", "finished")
    from udabench.results.records import val_set

    return {**{k: r.get(k) for k in keys}, "val_set": val_set(r)}


def _runs_listing(bench: str, spec: str, rows: list[dict[str, Any]], width: int) -> Text:
    """One benchmark's runs as aligned lines. Laid out here rather than by a rich Table: thousands of
    rows are listed in a fraction of the time. Method and name share the width the other columns
    leave (longer ones end in '…'); wall and iters are dropped first when the terminal is narrow."""
    from udabench.report import fmt

    subsets = [str(s) for s in rows[0]["subsets"]]
    named = any(r.get("name") or r.get("tags") for r in rows)
    headers = ["run id", "method", "name", "seed", "status", *[f"mIoU{sub}" for sub in subsets], "iters", "wall"]
    body = [[r["run_id"], r["method"] + ("" if r.get("uda", True) else " (not UDA)"), _label(r), str(r["seed"]),
             r["status"], *[fmt(r["miou"].get(sub)) for sub in subsets], str(r.get("iters", "-")),
             _duration((r.get("compute") or {}).get("wall_seconds"))] for r in rows]
    widths = [max(len(h), *(len(row[j]) for row in body)) for j, h in enumerate(headers)]
    shown = [j for j, h in enumerate(headers) if h != "name" or named]
    folding = [j for j in shown if headers[j] in ("method", "name")]

    def room() -> int:
        return (width - sum(widths[j] for j in shown if j not in folding) - 3 * (len(shown) - 1)) // len(folding)

    for optional in (len(headers) - 1, len(headers) - 2):
        if room() < min(10, min(widths[j] for j in folding)):
            shown.remove(optional)
    for j in folding:
        widths[j] = max(6, min(widths[j], room()))

    def cell(j: int, value: str) -> str:
        value = value if len(value) <= widths[j] else value[: widths[j] - 1] + "…"
        return value.rjust(widths[j]) if j == 3 or j > 4 else value.ljust(widths[j])

    styles = {"finished": "", "superseded": "dim", "missing": "red", "changed": "yellow"}
    out = Text(f"{bench} (spec {spec}): {len(rows)} run(s)\n", style="italic")
    out.append("   ".join(cell(j, headers[j]) for j in shown).rstrip() + "\n", style="bold")
    out.append("─" * min(width, sum(widths[j] for j in shown) + 3 * (len(shown) - 1)) + "\n")
    for r, row in zip(rows, body):
        line = "   ".join(cell(j, row[j]) for j in shown).rstrip() + "\n"
        out.append(line, style=styles[r["status"]])  # Text, not markup: a tag like [ablation] is data
    return out


@click.command("runs")
@click.option("--benchmark", "-b", help="only runs of this benchmark")
@click.option("--method", "-m", "methods", multiple=True, help="only runs of this method (repeatable)")
@click.option("--name", "names", multiple=True, help="only runs with this run name (repeatable)")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["finished", "superseded", "missing", "changed"]),
              help="only runs with this status (repeatable; default: finished and superseded)")
@click.option("--limit", type=click.IntRange(min=1), help="only the N most recently finished")
@click.option("--format", "fmt_", type=click.Choice(["rich", "json"]), default="rich", show_default=True)
@click.option("--reindex", "rebuild", is_flag=True, help="rebuild the store from the run directories first")
@click.option("--add", "add", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="also index the run directories below this folder, now and at every --reindex")
@click.option("--forget", "forget", multiple=True, type=click.Path(path_type=Path),
              help="stop indexing a folder given to --add (its rows go at the next --reindex)")
@click.option("--prune", is_flag=True, help="remove the rows of runs whose directory or result.json is gone")
@store_options
def runs_cmd(benchmark: str | None, methods: tuple[str, ...], names: tuple[str, ...], statuses: tuple[str, ...],
             limit: int | None, fmt_: str, rebuild: bool, add: tuple[Path, ...], forget: tuple[Path, ...],
             prune: bool, output_dir: Path | None, config_file: Path | None) -> None:
    """List the finished runs in the run store."""
    from udabench.results.store import delete_rows, forget_folder, store_path
    from udabench.results.view import MISSING, newest_first_key, no_runs_message

    out = _output_dir(output_dir, config_file)
    for folder in forget:
        known = forget_folder(store_path(out), folder)
        notify(f"{'forgot' if known else 'was not indexing'} {Path(folder).resolve()}")
    view = open_store(out, None, benchmark, rebuild, add)
    if prune:
        gone = [r["run_dir"] for r in view.having(MISSING)]
        removed = delete_rows(view.store, gone)
        notify(f"pruned {removed} row(s) of runs that are gone" + (f": {', '.join(gone)}" if gone else ""))
        view.rows = [r for r in view.rows if r["status"] != MISSING]
    rows = view.having(*(statuses or _SHOWN_BY_DEFAULT))
    rows = [r for r in rows if (not methods or r["method"] in methods) and (not names or r.get("name") in names)]
    if limit is not None:
        rows = sorted(sorted(rows, key=newest_first_key)[-limit:], key=newest_first_key)
    if fmt_ == "json":
        click.echo(json.dumps([_run_json(r) for r in rows], indent=2))
        return
    if not rows:
        what = no_runs_message(view.store, benchmark) if not (methods or names or statuses) else \
            f"no runs match these filters in {view.store}"
        console.print(Text(what), soft_wrap=True)
        return
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["benchmark"], r["spec_hash"]), []).append(r)
    for (bench, spec), group in sorted(groups.items()):
        console.print(_runs_listing(bench, spec, group, console.width), soft_wrap=True)
        console.print()
    console.print(Text(f"store {view.store}; a configuration and seed count once (the newest finished run; "
                       "older ones are superseded); compare two with `udabench compare A B`", style="dim"),
                  soft_wrap=True)


# --- leaderboard --------------------------------------------------------------------------------


def _leaderboard_records(view: Any, selectors: tuple[str, ...], methods: tuple[str, ...],
                         configs: tuple[str, ...], benchmark: str | None) -> list[dict[str, Any]]:
    from udabench.results.select import MIN_PREFIX, matching

    records = view.records
    if selectors:
        chosen: dict[str, dict[str, Any]] = {}
        for token in selectors:
            chosen.update((r["run_dir"], r) for r in matching(token, view, benchmark)[0])
        records = list(chosen.values())
    if methods:
        records = [r for r in records if r["method"] in methods]
    for prefix in configs:
        if len(prefix) < MIN_PREFIX:
            raise UserError(f"--config-hash {prefix}: give at least {MIN_PREFIX} characters of the config hash")
    if configs:
        records = [r for r in records if any(r["config_hash"].startswith(p) for p in configs)]
    return records


@click.command("leaderboard")
@click.argument("selectors", nargs=-1, metavar="[SELECT]...")
@click.option("--benchmark", "-b", help="only this benchmark")
@click.option("--method", "-m", "methods", multiple=True, help="only this method (repeatable)")
@click.option("--config-hash", "configs", multiple=True, metavar="HASH",
              help="only the configuration whose hash starts with HASH (>= 6 characters; repeatable)")
@click.option("--per-class", is_flag=True, help="add a column per class (mean IoU over seeds)")
@click.option("--columns", help="columns to show, in order, e.g. method,classes,miou or method,n,road,mIoU19 "
                                "(groups: classes, miou, compute)")
@click.option("--format", "fmt_", type=click.Choice(["rich", "markdown", "csv", "latex", "json"]),
              default="rich", show_default=True, help="output format")
@store_options
def leaderboard_cmd(selectors: tuple[str, ...], benchmark: str | None, methods: tuple[str, ...],
                    configs: tuple[str, ...], per_class: bool, columns: str | None, fmt_: str,
                    output_dir: Path | None, config_file: Path | None) -> None:
    """Mean +- std over seeds per method and config, one table per benchmark and spec hash.

    SELECT: method names, run names, config hash prefixes, run ids or run directories (default: all).
    """
    from udabench.results import tables
    from udabench.results.aggregate import build_boards, reported_benchmarks, reported_board
    from udabench.results.columns import parse_columns
    from udabench.results.view import no_runs_message

    chosen_columns = parse_columns(columns)
    view = open_store(output_dir, config_file, benchmark)
    records = _leaderboard_records(view, selectors, methods, configs, benchmark)
    boards, warnings = build_boards(records)
    _note_foreign_specs(boards, view.store)
    filtered = bool(selectors or methods or configs)
    if not records:
        notify(no_runs_message(view.store, benchmark) if not filtered else "no finished runs match these filters")
        if not filtered:  # the published numbers are worth showing on their own
            wanted = [benchmark] if benchmark else reported_benchmarks()
            boards = [b for b in map(reported_board, wanted) if b is not None]
    if fmt_ == "rich":
        tables.render_rich(boards, warnings, console, per_class, chosen_columns)
    elif fmt_ == "markdown":
        click.echo(tables.to_markdown(boards, warnings, per_class, chosen_columns))
    elif fmt_ == "latex":
        click.echo(tables.to_latex(boards, warnings, per_class, chosen_columns))
    elif fmt_ == "csv":
        for w in warnings:
            notify(f"warning: {w}")
        click.echo(tables.to_csv(boards, per_class, chosen_columns), nl=False)
    else:
        click.echo(tables.to_json(boards, warnings, per_class, chosen_columns))


# --- compare ------------------------------------------------------------------------------------


def _signed(value: float) -> Text:
    if value != value:  # NaN
        return Text("-")
    return Text(f"{value:+.1f}", style="green" if value > 0 else "red" if value < 0 else "")


def _describe(key: str, side: Any) -> Text:
    what = f"run {side.records[0]['run_id']}" if side.by == "run" else \
        f"config {side.config_hash[:8]}"
    uda = "" if all(r.get("uda", True) for r in side.records) else " (uses target labels: not UDA)"
    tags = sorted({str(t) for r in side.records for t in r.get("tags") or []})
    name = (f", name {side.name}" if side.name else "") + (f" [{', '.join(tags)}]" if tags else "")
    return Text(f"{key} = {side.label}: {side.method}{uda}, {what}{name}, seed(s) {','.join(map(str, side.seeds))}")


def resolve_sides(tokens: tuple[str, ...], benchmark: str | None, output_dir: Path | None,
                  config_file: Path | None) -> list[Any]:
    """The sides (udabench.results.select.Side) that words on the command line name."""
    from udabench.results.select import resolve
    from udabench.results.view import StoreView, no_runs_message

    if all(Path(t).is_dir() for t in tokens):  # directories alone need no store
        view = StoreView(Path(), Path(), [])
    else:
        view = open_store(output_dir, config_file, benchmark)
        if not view.records and not view.gone:
            raise UserError(no_runs_message(view.store, benchmark))
    sides = [resolve(tokens[0], view, benchmark)]
    for token in tokens[1:]:
        sides.append(resolve(token, view, benchmark or sides[0].benchmark, like=sides[0]))
    return sides


@click.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--benchmark", "-b", "benchmark", help="benchmark of method names (needed when a method ran on several)")
@click.option("--resamples", type=click.IntRange(min=100), default=1000, show_default=True,
              help="paired bootstrap resamples over validation images")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the bootstrap")
@store_options
def compare_cmd(a: str, b: str, benchmark: str | None, resamples: int, seed: int,
                output_dir: Path | None, config_file: Path | None) -> None:
    """Compare A and B (method names, run ids or run directories): per-class IoU and the mIoU
    difference with a 95% bootstrap confidence interval."""
    from udabench.report import fmt
    from udabench.results.aggregate import build_boards
    from udabench.results.compare import compare

    side_a, side_b = resolve_sides((a, b), benchmark, output_dir, config_file)
    result = compare(side_a, side_b, resamples, seed)
    boards, _ = build_boards(side_a.records + side_b.records, with_reported=False)
    caption = boards[0].caption() if boards else ""

    def header(key: str, label: str) -> str:  # long run ids would widen the table past the terminal
        return f"{key}: {label}" if len(label) <= 14 else key

    table = Table(title=f"{side_a.label} vs {side_b.label} on {side_a.benchmark}", title_justify="left",
                  caption=caption, caption_justify="left")
    table.add_column("class")
    table.add_column(header("A", side_a.label), justify="right")
    table.add_column(header("B", side_b.label), justify="right")
    table.add_column("A - B", justify="right")
    table.add_column("95% CI (images)", justify="right")
    for name, va, vb in result.per_class:
        table.add_row(name, fmt(va), fmt(vb), _signed(va - vb), "")
    table.add_section()
    for s in result.subsets:
        va, vb = result.miou[s]
        r = result.bootstrap[s]
        table.add_row(Text(f"mIoU{s}", style="bold"), fmt(va), fmt(vb), _signed(va - vb),
                      f"[{r.low:.1f}, {r.high:.1f}]")
    console.print(_describe("A", side_a), soft_wrap=True)
    console.print(_describe("B", side_b), soft_wrap=True)
    console.print(table)
    if result.seeds is not None:
        s = result.seeds
        console.print(Text(
            f"over seeds: {side_a.label} {s.mean_a:.1f} (n={s.n_a}), {side_b.label} {s.mean_b:.1f} (n={s.n_b}); "
            f"difference {s.difference:+.1f} mIoU{result.headline}, {s.confidence:.0%} Welch t CI "
            f"[{s.low:.1f}, {s.high:.1f}]"), soft_wrap=True)
    for note in result.notes:
        console.print(Text(f"note: {note}", style="dim"), soft_wrap=True)
    console.print(Text(result.verdict(), style="bold"), soft_wrap=True)
