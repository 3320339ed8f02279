"""``udabench sweep SPEC``, ``udabench sweep status SPEC``, ``udabench sweep cancel SPEC``."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from udabench.errors import UserError

console = Console()


class SweepGroup(click.Group):
    """``udabench sweep SPEC ...`` launches; ``status`` and ``cancel`` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = next((a for a in args if not a.startswith("-")), None)
        if first is not None and first not in self.commands and not ctx.resilient_parsing:
            args = ["launch", *args]
        return super().parse_args(ctx, args)


def _say(line: str) -> None:
    console.print(escape(line), highlight=False, soft_wrap=True)


@click.group("sweep", cls=SweepGroup, context_settings={"help_option_names": ["-h", "--help"]})
def sweep_group() -> None:
    """Run many runs from a TOML spec (methods x benchmarks x seeds x settings), locally or on Slurm.

    \b
    udabench sweep SPEC.toml [--launcher local|slurm] [--jobs N] [--dry-run] [--retry-failed]
    udabench sweep status SPEC.toml [--format json]
    udabench sweep cancel SPEC.toml
    """


@sweep_group.command("launch")
@click.argument("spec_file", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--launcher", type=click.Choice(["local", "slurm"]),
              help="where runs go (default: [sweep] launcher, else local)")
@click.option("--jobs", type=int, help="runs at once (local: processes; slurm: array tasks at once)")
@click.option("--dry-run", is_flag=True, help="show what would be launched, launch nothing")
@click.option("--retry-failed", is_flag=True, help="also relaunch failed runs")
@click.option("--wait", "wait_", is_flag=True, help="slurm: wait until every run has ended")
def launch_cmd(spec_file: Path, launcher: str | None, jobs: int | None, dry_run: bool,
               retry_failed: bool, wait_: bool) -> None:
    """Launch the runs of SPEC that are not done (finished runs are skipped, interrupted ones resumed)."""
    from udabench.sweep.launch import run_sweep, wait_for
    from udabench.sweep.spec import load_spec
    from udabench.sweep.status import DONE, FAILED

    spec = load_spec(spec_file)
    launcher = launcher or spec.sweep.launcher
    steps, ended = run_sweep(spec, launcher, jobs, dry_run, retry_failed, _say)
    if dry_run:
        return
    if launcher == "slurm":
        if not wait_:
            return
        states = wait_for(spec, _say)
        bad = [s for s in states if s.state != DONE]
        for s in bad:
            _say(f"{s.state} {s.run.label()}: {s.error or ''}")
        if any(s.state == FAILED for s in bad):
            sys.exit(1)
        return
    failed = [r for r in ended if r["state"] == FAILED]
    if ended:
        _say(f"{len(ended) - len(failed)} of {len(ended)} launched run(s) ended well; "
             f"`udabench sweep status {spec_file}` shows the whole sweep")
    if failed:
        sys.exit(1)


@sweep_group.command("status")
@click.argument("spec_file", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["rich", "json"]), default="rich", show_default=True)
def status_cmd(spec_file: Path, fmt: str) -> None:
    """Where each run of SPEC stands: pending, queued, running, done, interrupted or failed."""
    from udabench.sweep.ledger import Ledger
    from udabench.sweep.resolve import resolve_runs
    from udabench.sweep.spec import load_spec
    from udabench.sweep.status import counts, run_states

    spec = load_spec(spec_file)
    ledger = Ledger(spec.folder())
    states = run_states(resolve_runs(spec), ledger)
    if fmt == "json":
        click.echo(json.dumps({"sweep": str(spec.path), "folder": str(ledger.folder),
                               "counts": counts(states), "runs": [s.to_json() for s in states]},
                              indent=2))
        return
    table = Table(title=f"sweep {spec.path.name}", title_justify="left")
    for col in ("id", "method", "name", "benchmark", "seed", "grid", "state"):
        table.add_column(col, no_wrap=col in ("id", "seed", "state"))
    table.add_column("run directory / where / error", overflow="fold")
    colour = {"done": "green", "failed": "red", "interrupted": "yellow", "running": "cyan",
              "queued": "cyan", "pending": "dim"}
    for s in states:
        run = s.run
        settings = " ".join(f"{k}={v}" for k, v in run.settings if k in spec.grid)
        detail = s.error if s.state in ("failed", "interrupted") else (s.run_dir if s.state == "done" else s.where)
        table.add_row(run.id, run.method, run.name or "-", run.benchmark, str(run.seed),
                      escape(settings), f"[{colour[s.state]}]{s.state}[/]", escape(detail or ""))
    console.print(table)
    console.print(", ".join(f"{n} {state}" for state, n in counts(states).items() if n))


@sweep_group.command("cancel")
@click.argument("spec_file", metavar="SPEC", type=click.Path(path_type=Path))
def cancel_cmd(spec_file: Path) -> None:
    """Stop SPEC's running and queued runs (each writes a checkpoint; the next sweep resumes it)."""
    from udabench.sweep.ledger import Ledger
    from udabench.sweep.spec import load_spec
    from udabench.sweep.status import busy_jobs, local_alive

    spec = load_spec(spec_file)
    ledger = Ledger(spec.folder())
    # from the ledger alone (no settings to resolve): a cancel must be quick
    slurm_ids, groups = busy_jobs([run.id for run in spec.runs()], ledger)
    if slurm_ids:
        from udabench.sweep.slurm import cancel

        cancel(slurm_ids, ledger.slurm_folder)
        _say(f"cancelled {len(slurm_ids)} Slurm job(s): {' '.join(slurm_ids)}")
    launcher = ledger.launcher()
    if launcher and local_alive(launcher):
        # the local launcher passes SIGTERM on to its runs and starts no more
        os.kill(int(launcher["pid"]), signal.SIGTERM)
        _say(f"sent SIGTERM to the sweep process {launcher['pid']} and so to its "
             f"{len(groups)} running run(s)")
    else:
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if groups:
            _say(f"sent SIGTERM to {len(groups)} running run(s)")
    if not slurm_ids and not groups and not (launcher and local_alive(launcher)):
        raise UserError(f"nothing of {spec_file} is running or queued (see `udabench sweep status "
                        f"{spec_file}`)")
