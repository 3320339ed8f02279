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

# Verb modules, each exposing a click command or group named like the module's attribute.
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("udabench.commands.run", "run_cmd"),
    ("udabench.commands.run", "eval_cmd"),
    ("udabench.commands.data", "data"),
    ("udabench.commands.results", "runs_cmd"),
    ("udabench.commands.results", "leaderboard_cmd"),
    ("udabench.commands.results", "compare_cmd"),
    ("udabench.commands.score", "score"),
    ("udabench.commands.predict", "predict_cmd"),
    ("udabench.commands.predict", "plot_cmd"),
)

console = Console()
err_console = Console(stderr=True)


_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


class UdabenchGroup(click.Group):
    """Turns UserError into one line and a non-zero exit, wherever it is raised."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            # escape(): messages name TOML tables like [train]; rich would eat them as markup
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
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
def methods_cmd(pattern: str) -> None:
    """List registered methods (PATTERN is a wildcard, e.g. 'self*')."""
    table = Table(title="udabench methods", title_justify="left")
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("description")
    table.add_column("defaults", style="dim")
    entries = METHODS.entries(pattern)
    for entry in entries:
        defaults = getattr(entry.obj, "describe_defaults", None)
        table.add_row(entry.name, entry.description, defaults() if defaults else "")
    if not entries:
        raise UserError(f"no method matches '{pattern}'; known: {', '.join(METHODS.names()) or 'none'}")
    console.print(table)


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


for _module, _attr in _COMMANDS:
    main.add_command(getattr(importlib.import_module(_module), _attr))
