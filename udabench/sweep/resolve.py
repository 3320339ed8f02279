"""Sweep runs -> the config hash ``udabench run`` will give each, and the finished runs on disk.

A run of the sweep is finished when the output folder holds a finished run with the same
benchmark, config hash and seed (the identity `udabench run` and the leaderboard use), whoever
made it. The hash is computed with the very function `udabench run` uses to read its options,
so the sweep and its runs cannot disagree; resolving also checks every setting of every run
before anything is launched.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udabench.errors import ConfigError, UserError
from udabench.sweep.spec import SweepRun, SweepSpec


@dataclass
class Resolved:
    run: SweepRun
    config_hash: str | None  # None: it depends on a warm-start run that is not finished yet
    output_dir: Path
    config_file: Path | None

    def udabench_args(self) -> list[str]:
        """The ``udabench`` arguments that make this run."""
        run = self.run
        args = ["run", run.method, "--benchmark", run.benchmark, "--seed", str(run.seed),
                "--out", str(self.output_dir)]
        if self.config_file is not None:
            args += ["--config", str(self.config_file)]
        for item in run.set_args():
            args += ["--set", item]
        if run.name:
            args += ["--name", run.name]
        for tag in run.tags:
            args += ["--tag", tag]
        return args


def settings_file(spec: SweepSpec) -> Path | None:
    """The settings file every run reads: [sweep] config, else ./udabench.toml when present."""
    from udabench.config import find_config_file

    if spec.sweep.config:
        path = spec.resolve(spec.sweep.config)
        if not path.is_file():
            raise ConfigError(f"{spec.path}: sweep.config = {spec.sweep.config!r}: {path} does not exist")
        return path
    found = find_config_file(None)
    return found.resolve() if found else None


def resolve_runs(spec: SweepSpec, runs: list[SweepRun] | None = None) -> list[Resolved]:
    """Every run's config hash and output folder; a bad setting is one line naming the run."""
    from udabench.commands.run import plans_from_options

    config_file = settings_file(spec)
    out = spec.resolve(spec.sweep.out) if spec.sweep.out else None
    resolved = []
    for run in spec.runs() if runs is None else runs:
        try:
            plan = plans_from_options(run.method, run.benchmark, run.seed, None, {},
                                      tuple(run.set_args()), config_file, out, run.name,
                                      run.tags, None)[0]
            resolved.append(Resolved(run, _config_hash(plan), Path(plan.output_dir), config_file))
        except UserError as exc:
            raise type(exc)(f"{spec.path}: {run.label()}: {exc}") from None
    return resolved


class _SourceNotFinished(Exception):
    """The run a warm-starting method starts from is not finished yet."""


def _not_finished(src: Any) -> None:
    raise _SourceNotFinished


def _config_hash(plan: Any) -> str | None:
    """The hash the run will record, ``train.init_from`` resolved by `udabench run`'s own code (a
    method whose protocol starts from another method's finished run: that run's weights); None
    while that run is not finished."""
    from udabench.commands.run import with_init_from

    try:
        return with_init_from(plan, _not_finished, announce=False).config_hash()
    except _SourceNotFinished:
        return None


def finished_runs(output_dirs: set[Path]) -> dict[tuple[str, str, int], str]:
    """(benchmark, config hash, seed) -> run directory of every finished run in these folders."""
    from udabench.results.view import open_view

    found: dict[tuple[str, str, int], str] = {}
    for out in output_dirs:
        if not out.exists():
            continue
        for record in open_view(out).records:
            key = (record["benchmark"], record.get("config_hash"), int(record.get("seed", -1)))
            found[key] = record["run_dir"]
    return found
