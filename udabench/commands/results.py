"""``udabench runs``, ``udabench leaderboard`` and ``udabench compare``: read the run store."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich import box
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


def _locate(output_dir: Path | None, config_file: Path | None) -> tuple[Path, Path]:
    from udabench.results.store import store_path

    if output_dir is None:
        from udabench.config import load_config

        output_dir = load_config(config_file).paths.output_dir
    return store_path(output_dir), Path(output_dir)


def _records(output_dir: Path | None, config_file: Path | None, benchmark: str | None,
             rebuild: bool = False) -> tuple[list[dict[str, Any]], Path]:
    """Records of the store; builds the store from the run directories on first use or on request."""
    from udabench.results.store import find_run_dirs, load_records, reindex

    store, out = _locate(output_dir, config_file)
    if rebuild or (not store.exists() and find_run_dirs(out)):
        summary = reindex(store, out)
        notices.print(f"indexed {summary.indexed} run(s) from {out} into {store}", soft_wrap=True)
        for reason in summary.skipped:
            notices.print(Text(f"skipped: {reason}", style="yellow"), soft_wrap=True)
    records = load_records(store)
    if benchmark is not None:
        _check_benchmark(benchmark, records)
        records = [r for r in records if r["benchmark"] == benchmark]
    return records, store


def _check_benchmark(benchmark: str, records: list[dict[str, Any]]) -> None:
    from udabench.registry import BENCHMARKS, did_you_mean

    known = sorted(set(BENCHMARKS.names()) | {r["benchmark"] for r in records})
    if benchmark not in known:
        raise UserError(f"unknown benchmark '{benchmark}'{did_you_mean(benchmark, known)}; known: {', '.join(known)}")


def _note_foreign_specs(boards: list[Any]) -> None:
    """Say when a table's spec hash is not the benchmark's current definition (overrides, old versions)."""
    from udabench.registry import BENCHMARKS

    names = set(BENCHMARKS.names())
    for board in boards:
        if board.benchmark in names:
            current = BENCHMARKS.get(board.benchmark).hash()
            if current != board.spec_hash:
                board.notes.append(f"spec {board.spec_hash} is not the current {board.benchmark} definition "
                                   f"({current}): runs with [benchmarks] overrides or an older udabench")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


@click.command("runs")
@click.option("--benchmark", "-b", help="only runs of this benchmark")
@click.option("--reindex", "rebuild", is_flag=True, help="rebuild the store from the run directories first")
@store_options
def runs_cmd(benchmark: str | None, rebuild: bool, output_dir: Path | None, config_file: Path | None) -> None:
    """List the finished runs in the run store."""
    from udabench.report import fmt
    from udabench.results.aggregate import build_boards
    from udabench.results.compare import no_runs_message

    records, store = _records(output_dir, config_file, benchmark, rebuild)
    if not records:
        console.print(Text(no_runs_message(store, benchmark)), soft_wrap=True)
        return
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["benchmark"], r["spec_hash"]), []).append(r)
    for (bench, spec), rows in sorted(groups.items()):
        subsets = [str(s) for s in rows[0]["subsets"]]
        (board,), _ = build_boards(rows, with_reported=False)
        table = Table(title=f"{bench} (spec {spec}): {len(rows)} run(s)", title_justify="left",
                      caption=board.caption(), caption_justify="left",
                      box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        # The run id carries the config hash (and seed), so it is the one column never squeezed.
        table.add_column("run id", no_wrap=True, min_width=max(len(r["run_id"]) for r in rows))
        labels = [r["method"] + ("" if r.get("uda", True) else " (not UDA)") for r in rows]
        table.add_column("method", overflow="fold", min_width=min(20, max(map(len, labels))))
        table.add_column("seed", justify="right", no_wrap=True)
        for sub in subsets:
            table.add_column(f"mIoU{sub}", justify="right", no_wrap=True)
        table.add_column("iters", justify="right", no_wrap=True)
        table.add_column("wall", justify="right", no_wrap=True)
        for r, method in zip(rows, labels):
            table.add_row(r["run_id"], method, str(r["seed"]),
                          *[fmt(r["miou"].get(sub)) for sub in subsets], str(r.get("iters", "-")),
                          _duration((r.get("compute") or {}).get("wall_seconds")))
        console.print(table)
        console.print()
    console.print(Text(f"store {store}; run directories are <output_dir>/<benchmark>/<method>/<run id>; "
                       "compare two with `udabench compare A B`", style="dim"))


@click.command("leaderboard")
@click.option("--benchmark", "-b", help="only this benchmark")
@click.option("--per-class", is_flag=True, help="add a column per class (mean IoU over seeds)")
@click.option("--format", "fmt_", type=click.Choice(["rich", "markdown", "csv", "latex", "json"]),
              default="rich", show_default=True, help="output format")
@store_options
def leaderboard_cmd(benchmark: str | None, per_class: bool, fmt_: str, output_dir: Path | None,
                    config_file: Path | None) -> None:
    """Mean +- std over seeds per method and config, one table per benchmark and spec hash."""
    from udabench.results import tables
    from udabench.results.aggregate import build_boards
    from udabench.results.compare import no_runs_message

    records, store = _records(output_dir, config_file, benchmark)
    if not records:
        console.print(Text(no_runs_message(store, benchmark)), soft_wrap=True)
        return
    boards, warnings = build_boards(records)
    _note_foreign_specs(boards)
    if fmt_ == "rich":
        tables.render_rich(boards, warnings, console, per_class)
    elif fmt_ == "markdown":
        click.echo(tables.to_markdown(boards, warnings, per_class))
    elif fmt_ == "latex":
        click.echo(tables.to_latex(boards, warnings, per_class))
    elif fmt_ == "csv":
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        click.echo(tables.to_csv(boards, per_class), nl=False)
    else:
        click.echo(tables.to_json(boards, warnings, per_class))


def _signed(value: float) -> Text:
    if value != value:  # NaN
        return Text("-")
    return Text(f"{value:+.1f}", style="green" if value > 0 else "red" if value < 0 else "")


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
    from udabench.results.compare import compare, no_runs_message, resolve

    records, store = _records(output_dir, config_file, benchmark)
    paths = [t for t in (a, b) if Path(t).is_dir()]
    if not records and not paths:
        raise UserError(no_runs_message(store, benchmark))
    side_a = resolve(a, records, benchmark)
    side_b = resolve(b, records, benchmark or side_a.benchmark, side_a.spec_hash)
    result = compare(side_a, side_b, resamples, seed)
    boards, _ = build_boards(side_a.records + side_b.records, with_reported=False)
    caption = boards[0].caption() if boards else ""

    def describe(key: str, side) -> Text:
        what = "latest config" if side.by == "method" else "run"
        uda = "" if all(r.get("uda", True) for r in side.records) else " (uses target labels: not UDA)"
        return Text(f"{key} = {side.label}: {side.method}{uda}, {what} {side.config_hash[:8]}, "
                    f"seed(s) {','.join(map(str, side.seeds))}")

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
    console.print(describe("A", side_a), soft_wrap=True)
    console.print(describe("B", side_b), soft_wrap=True)
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
