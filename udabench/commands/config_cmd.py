"""``udabench config show``: the settings a run would use, and where each value comes from."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from udabench.errors import ConfigError

console = Console()


def resolved_settings(plan: Any) -> list[tuple[str, Any, str]]:
    """(key, value, origin) for every setting of a resolved plan, in the order a user reads them."""
    rows: list[tuple[str, Any, str]] = []

    def add(prefix: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            full = f"{prefix}.{key}"
            rows.append((full, value, plan.origins.get(full) or _section_origin(plan, full) or "default"))

    add("paths", {"data_root": plan.data_root, "output_dir": plan.output_dir})
    add("train", dataclasses.asdict(plan.train))
    add("model", dataclasses.asdict(plan.model))
    add(f"methods.{plan.method}", plan.method_config)
    return rows


def _section_origin(plan: Any, key: str) -> str | None:
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        found = plan.origins.get(".".join(parts[:n]))
        if found and found.startswith("--set"):
            continue  # a --set on a sibling key says nothing about this one
        if found:
            return found
    return None


def _toml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""  # none'
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@click.group("config")
def config_group() -> None:
    """Show the resolved settings of a run before running it."""


@config_group.command("show")
@click.argument("method")
@click.option("--benchmark", "-b", required=True, help="benchmark protocol")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="as for `udabench run`")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="settings file (default ./udabench.toml)")
@click.option("--format", "fmt", type=click.Choice(["rich", "toml", "json"]), default="rich", show_default=True)
def show_cmd(method: str, benchmark: str, sets: tuple[str, ...], config_file: Path | None, fmt: str) -> None:
    """Every setting METHOD would run with on a benchmark, and where each value comes from
    (default, the benchmark, the method's published schedule, udabench.toml:line, --set)."""
    from udabench.commands.run import plans_from_options

    plan = plans_from_options(method, benchmark, None, None, {}, sets, config_file, None, None, (), None)[0]
    rows = resolved_settings(plan)
    if fmt == "json":
        click.echo(json.dumps([{"key": k, "value": v, "from": o} for k, v, o in rows], indent=2,
                              default=str))
        return
    if fmt == "toml":  # a settings file that reproduces this run, with the origins as comments
        section = None
        for key, value, origin in rows:
            table, _, name = key.rpartition(".")
            if table != section:
                click.echo(f"\n[{table}]")
                section = table
            click.echo(f"{name} = {_toml_value(value)}  # {origin}")
        return
    out = Table(title=f"{method} on {benchmark}: resolved settings (spec {plan.spec_hash}, "
                      f"config {plan.config_hash()[:8]})", title_justify="left")
    for col in ("key", "value", "from"):
        out.add_column(col, overflow="fold")
    for key, value, origin in rows:
        out.add_row(key, repr(value) if isinstance(value, str) else str(value), origin,
                    style=None if origin == "default" else "bold")
    console.print(out)


def method_defaults_on(name: str, benchmark: str) -> dict[str, Any]:
    """A method's settings as they apply on a benchmark (its run defaults, no user settings)."""
    from udabench.config import TrainConfig
    from udabench.engine.plan import resolve_plan

    try:
        plan = resolve_plan(name, benchmark, 0, TrainConfig(), {}, {}, {}, Path("."), Path("."))
    except ConfigError as exc:  # a method that cannot run there says why
        return {"error": str(exc)}
    return {**plan.method_config, "train.iters": plan.train.iters, "train.batch_size": plan.train.batch_size,
            "model.backbone": plan.model.backbone}
