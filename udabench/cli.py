"""The ``udabench`` command: a click group; each verb lives in ``udabench/commands/``.

User mistakes (UserError) print one red line and exit 2; nothing prints a traceback for them.
"""
from __future__ import annotations

import errno
import importlib
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from udabench import __version__
from udabench.errors import UserError
from udabench.registry import BENCHMARKS, METHODS

# Verb modules are imported only when their verb runs: most pull in torch/torchvision, which
# would make `udabench --version` or `--help` take seconds. The help line is kept here so that
# listing the verbs imports nothing (a test checks it equals each command's own docstring).
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("udabench.commands.run", "run_cmd",
            "Train METHOD on a benchmark, evaluate it, and write a run directory."),
    "eval": ("udabench.commands.run", "eval_cmd",
             "Evaluate a run (any of its checkpoints) or a weights file on a benchmark's validation set."),
    "data": ("udabench.commands.data", "data",
             "Check and prepare datasets on disk (udabench never downloads datasets)."),
    "runs": ("udabench.commands.results", "runs_cmd", "List the finished runs in the run store."),
    "leaderboard": ("udabench.commands.results", "leaderboard_cmd",
                    "Mean +- std over seeds per method and config, one table per benchmark and spec hash."),
    "compare": ("udabench.commands.results", "compare_cmd",
                "Compare A and B (method names, run ids or run directories): per-class IoU and the "
                "mIoU difference with a 95% bootstrap confidence interval."),
    "score": ("udabench.commands.score", "score",
              "Score one prediction PNG per validation image in PRED_DIR (flat or a mirrored tree)."),
    "predict": ("udabench.commands.predict", "predict_cmd",
                "Write RUN's predictions on the benchmark's target images as PNGs."),
    "config": ("udabench.commands.config_cmd", "config_group",
               "Show the resolved settings of a run before running it."),
    "plot": ("udabench.commands.predict", "plot_cmd",
             "Charts (PNG, PDF or SVG): one run's per-class IoU and training curves, or per-class bars of several runs with error bars over seeds."),
    "sweep": ("udabench.commands.sweep", "sweep_group", "Run many runs from a TOML spec (methods x benchmarks x seeds x settings), locally or on Slurm."),
    "selftest": ("udabench.commands.selftest", "selftest_cmd",
                 "Run every method at the real protocols' sizes on generated data, and time it."),
}

console = Console()
err_console = Console(stderr=True)


_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


class UdabenchGroup(click.Group):
    """Loads verbs on first use; turns UserError into one line and a non-zero exit."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _COMMANDS and name not in self.commands:
            module, attr, _ = _COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(map(len, self.list_commands(ctx)))
        rows = []
        for name in self.list_commands(ctx):
            if name in _COMMANDS and name not in self.commands:
                text = _COMMANDS[name][2]  # click's own shortening, without importing the verb
                rows.append((name, click.Command(name, help=text).get_short_help_str(limit)))
            else:
                rows.append((name, self.commands[name].get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            # escape(): messages name TOML tables like [train]; rich would eat them as markup
            # backslashreplace: a path with undecodable bytes must not crash the one error line
            text = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")
            err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a full disk or a read-only file system, wherever a write met it
            if exc.errno not in _STORAGE_ERRORS:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            err_console.print(
                f"[bold red]error:[/] cannot write{escape(where)} ({exc.strerror}); free space or fix "
                "permissions, then run again (an interrupted run continues with --resume)",
                highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=UdabenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="udabench")
def main() -> None:
    """Benchmark unsupervised domain adaptation for semantic segmentation (GTA5/SYNTHIA -> Cityscapes)."""


@main.command("methods")
@click.argument("pattern", default="*")
@click.option("--benchmark", "-b", help="show the values that apply on this benchmark (its run "
                                        "defaults and the methods' published schedules)")
def methods_cmd(pattern: str, benchmark: str | None) -> None:
    """List registered methods (PATTERN is a wildcard, e.g. 'self*')."""
    title = f"udabench methods on {benchmark}" if benchmark else "udabench methods (built-in defaults)"
    table = Table(title=title, title_justify="left")
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("description")
    table.add_column("defaults", style="dim")
    entries = METHODS.entries(pattern)
    if not entries:
        raise UserError(f"no method matches '{pattern}'; known: {', '.join(METHODS.names()) or 'none'}")
    if benchmark:
        BENCHMARKS.get(benchmark)  # an unknown name is one line
        from udabench.commands.config_cmd import method_defaults_on
    for entry in entries:
        if benchmark:
            values = method_defaults_on(entry.name, benchmark)
            text = ", ".join(f"{k}={v!r}" for k, v in values.items())
        else:
            defaults = getattr(entry.obj, "describe_defaults", None)
            text = defaults() if defaults else ""
        table.add_row(entry.name, entry.description, text)
    console.print(table)
    if not benchmark:
        console.print("[dim]values differ per benchmark (e.g. MiniCity trains at lr 0.01): "
                      "udabench methods --benchmark B; one run's settings: udabench config show "
                      "METHOD --benchmark B[/]")


@main.command("benchmarks")
@click.argument("pattern", default="*")
def benchmarks_cmd(pattern: str) -> None:
    """List benchmark protocols (PATTERN is a wildcard, e.g. 'minicity*')."""
    table = Table(title="udabench benchmarks", title_justify="left")
    table.add_column("name", style="bold cyan", no_wrap=True)
    for col in ("description", "source -> target", "scored", "train / eval input", "spec"):
        table.add_column(col)
    entries = BENCHMARKS.entries(pattern)
    if not entries:
        raise UserError(
            f"no benchmark matches '{pattern}'; known: {', '.join(BENCHMARKS.names()) or 'none'}"
        )
    for entry in entries:
        b = entry.obj
        table.add_row(*b.summary_row())
    console.print(table)

