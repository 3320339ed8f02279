"""A sweep file (TOML) -> the list of runs it asks for, each with a stable id.

A sweep crosses methods x benchmarks x seeds x the combinations of ``[grid]`` settings; ``[set]``
settings go to every run. A ``methods.<m>.*`` key only varies (and only reaches) the runs of
method ``m``, a ``benchmarks.<b>.*`` key only those of benchmark ``b``, so a grid over AdvEnt's
``methods.adversarial.input`` does not duplicate the source-only runs. The id of a run is a
hash of its method, benchmark, seed and sorted settings: the same run keeps its id when other
seeds or grid values are added to the file, which is what makes a rerun launch only what is new.

Reading a sweep file imports neither torch nor the registries (``sweep status`` stays quick);
the settings themselves are checked when the runs are resolved (``udabench.sweep.identity``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from udabench.config import build, read_toml
from udabench.errors import ConfigError
from udabench.registry import did_you_mean
from udabench.settings import Allowed, Settings, setting

SECTIONS = ("sweep", "set", "grid", "names", "local", "slurm")
_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+$")
_SEEDS = re.compile(r"^\s*\d+\s*(-\s*\d+\s*)?(,\s*\d+\s*(-\s*\d+\s*)?)*$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass
class SweepSection(Settings):
    WHERE: ClassVar[str] = "sweep"

    methods: list[str] = setting(default_factory=list, min_len=1, item=Allowed(nonempty=True),
                                 doc="methods to run (see `udabench methods`)")
    benchmarks: list[str] = setting(default_factory=list, min_len=1, item=Allowed(nonempty=True),
                                    doc="benchmarks to run them on")
    seeds: list[int] | str = setting(default_factory=lambda: [0], free=True,
                                     doc="a list of seeds or a range like \"0-2\"")
    config: str = setting("", free=True, doc="settings file of every run (default ./udabench.toml)")
    out: str = setting("", free=True, doc="output folder (default: the settings' paths.output_dir)")
    folder: str = setting("", free=True, doc="ledger and logs (default: <spec stem>.sweep beside the spec)")
    tags: list[str] = setting(default_factory=list, item=Allowed(nonempty=True), doc="tags of every run")
    launcher: str = setting("local", choices=("local", "slurm"), doc="local | slurm")


@dataclass
class LocalSection(Settings):
    WHERE: ClassVar[str] = "local"

    jobs: int = setting(0, ge=0, doc="runs at once; 0 = one per GPU, or one per CPU core")
    # Fixed, not cores // jobs: CPU results change (slightly) with torch's thread count, so the
    # default keeps a run's numbers independent of how many run beside it.
    threads_per_job: int = setting(1, ge=1, doc="torch/OpenMP threads of each run")
    gpus_per_job: int = setting(1, ge=0, doc="GPUs of each run where GPUs exist (>1: torchrun)")


@dataclass
class SlurmSection(Settings):
    WHERE: ClassVar[str] = "slurm"

    partition: str = setting("", free=True)
    account: str = setting("", free=True)
    qos: str = setting("", free=True)
    constraint: str = setting("", free=True)
    exclude: str = setting("", free=True)
    time: str = setting("1:00:00", free=True, doc="minutes, or Slurm's [D-]HH:MM:SS")
    gpus_per_job: int = setting(0, ge=0, doc=">1 runs torchrun --nproc_per_node=G")
    cpus_per_job: int = setting(1, ge=1, doc="CPUs (and torch threads) of each job")
    mem_gb: float = setting(0.0, ge=0, doc="memory per job; 0 = the partition's default")
    signal_delay_s: int = setting(120, ge=0, doc="checkpoint signal this long before the time limit")
    stop_timeout_s: int = setting(0, ge=0, doc="wait this long for the checkpoint; 0 = signal_delay_s - 10")
    max_requeues: int = setting(10, ge=0, doc="requeues after time limits (a long run spans several)")
    array_parallelism: int = setting(0, ge=0, doc="array tasks at once; 0 = --jobs, or no limit")
    job_name: str = setting("", free=True, doc="default: udabench-<sweep name>")
    setup: list[str] = setting(default_factory=list, free=True, doc="shell lines run before the job (module load ...)")
    sbatch: dict[str, Any] = setting(default_factory=dict, free=True, doc="any other sbatch option")

    def check(self) -> None:
        try:
            time_minutes(self.time)
        except ValueError:
            raise self.fail("time", "expected minutes (an integer) or [D-]HH:MM:SS") from None

    def minutes(self) -> int:
        return time_minutes(self.time)


def time_minutes(value: str) -> int:
    """Slurm's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> whole minutes (rounded up)."""
    m = _TIME.match(value.strip())
    if not m:
        raise ValueError(value)
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    else:  # M or M:S
        seconds = int(a) * 60 + int(b or 0)
    if seconds < 1:
        raise ValueError(value)
    return math.ceil(seconds / 60)


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: ``udabench run METHOD -b BENCHMARK --seed SEED --set ...``."""

    id: str
    method: str
    benchmark: str
    seed: int
    settings: tuple[tuple[str, Any], ...]  # sorted (dotted key, value)
    name: str | None = None
    tags: tuple[str, ...] = ()

    def set_args(self) -> list[str]:
        """The ``--set`` values, written so that udabench reads back exactly these values."""
        return [f"{key}={toml_literal(value)}" for key, value in self.settings]

    def label(self) -> str:
        return f"{self.method}{f' [{self.name}]' if self.name else ''} {self.benchmark} s{self.seed}"


@dataclass
class SweepSpec:
    path: Path
    sweep: SweepSection
    seeds: list[int]
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    names: dict[tuple[str, str], str]  # (key, canonical value) -> name
    local: LocalSection = field(default_factory=LocalSection)
    slurm: SlurmSection = field(default_factory=SlurmSection)

    @property
    def title(self) -> str:
        return self.path.stem

    def folder(self) -> Path:
        """Where the ledger and the logs live."""
        return self.resolve(self.sweep.folder) if self.sweep.folder else \
            self.path.parent / f"{self.path.stem}.sweep"

    def resolve(self, value: str) -> Path:
        """A path of the sweep file: relative paths are relative to the file's folder."""
        p = Path(value).expanduser()
        return (p if p.is_absolute() else self.path.parent / p).resolve()

    def runs(self) -> list[SweepRun]:
        """Every run, in a stable order (benchmark, method, grid combination, seed)."""
        out: dict[str, SweepRun] = {}
        for bench in self.sweep.benchmarks:
            for method in self.sweep.methods:
                fixed = {k: v for k, v in self.fixed.items() if applies(k, method, bench)}
                keys = [k for k in self.grid if applies(k, method, bench)]
                for combo in itertools.product(*(self.grid[k] for k in keys)):
                    chosen = dict(zip(keys, combo))
                    names = [self.names[(k, canonical(v))] for k, v in chosen.items()
                             if (k, canonical(v)) in self.names]
                    settings = tuple(sorted({**fixed, **chosen}.items()))
                    for seed in self.seeds:
                        run_id = run_identity(method, bench, seed, settings)
                        out.setdefault(run_id, SweepRun(
                            run_id, method, bench, seed, settings, "-".join(names) or None,
                            tuple(self.sweep.tags)))
        return list(out.values())


def applies(key: str, method: str, benchmark: str) -> bool:
    """Whether a setting reaches a run: [methods.m] keys only method m's, [benchmarks.b] only b's."""
    parts = key.split(".")
    if parts[0] == "methods" and len(parts) > 2:
        return parts[1] == method
    if parts[0] == "benchmarks" and len(parts) > 2:
        return parts[1] == benchmark
    return True


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_identity(method: str, benchmark: str, seed: int, settings: tuple[tuple[str, Any], ...]) -> str:
    """The stable id of a run: a hash of what defines it (never of names, tags or order)."""
    blob = json.dumps({"method": method, "benchmark": benchmark, "seed": seed,
                       "settings": [[k, v] for k, v in sorted(settings)]},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def toml_literal(value: Any) -> str:
    """A TOML value literal (the form ``--set`` parses back to the same value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"value {value!r} ({type(value).__name__}) cannot be passed as a --set value")


def parse_seeds(value: list[int] | str, where: str) -> list[int]:
    if isinstance(value, str):
        if not _SEEDS.match(value):
            raise ConfigError(f"{where} = {value!r} is not allowed: expected a list of seeds or "
                              "a range like \"0-2\" (or \"0-2,5\")")
        seeds: list[int] = []
        for part in value.split(","):
            lo, sep, hi = part.partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    else:
        seeds = list(value)
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} = {value!r} is not allowed: expected distinct non-negative seeds")
    return seeds


def flatten(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"train": {"iters": 5}}`` and ``{"train.iters": 5}`` both -> ``{"train.iters": 5}``.
    Tables nest down to a setting (``train.iters``, ``methods.<m>.<key>``); a table below that is
    a value (an inline table such as a benchmark's ``minicity = {...}``)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        parts = (*prefix, *key.split("."))
        depth = 3 if parts[0] in ("methods", "benchmarks") else 2
        if isinstance(value, dict) and len(parts) < depth:
            out.update(flatten(value, parts))
        else:
            out[".".join(parts)] = value
    return out


def _check_key(key: str, where: str, methods: list[str], benchmarks: list[str]) -> None:
    if not _KEY.match(key):
        raise ConfigError(f"{where}: key {key!r} is not allowed: expected SECTION.KEY, e.g. "
                          "train.iters or methods.adversarial.input")
    parts = key.split(".")
    if parts[0] in ("methods", "benchmarks") and len(parts) < 3:
        raise ConfigError(f"{where}: key {key!r} is not allowed: expected {parts[0]}.<name>.<key>")
    for kind, listed in (("methods", methods), ("benchmarks", benchmarks)):
        if parts[0] == kind and len(parts) > 2 and parts[1] not in listed:
            raise ConfigError(f"{where}.{key}: {kind[:-1]} '{parts[1]}' is not in [sweep] {kind} "
                              f"({', '.join(listed)}){did_you_mean(parts[1], listed)}; this setting "
                              "would reach no run")


def load_spec(path: Path) -> SweepSpec:
    """Read and check a sweep file; every mistake is one ConfigError line naming file and key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    path = path.resolve()
    _, data = read_toml(path)
    try:
        return _from_data(path, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _from_data(path: Path, data: dict[str, Any]) -> SweepSpec:
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"unknown section [{key}]{did_you_mean(key, list(SECTIONS))}; "
                              f"known: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a [table], got {value!r}")
    if "sweep" not in data:
        raise ConfigError("no [sweep] table; a sweep needs at least [sweep] methods = [...] "
                          "and benchmarks = [...]")
    for key in ("methods", "benchmarks"):
        if key not in data["sweep"]:
            raise ConfigError(f"[sweep] has no '{key}'; list at least one")
    sweep = build(SweepSection, data["sweep"], "sweep")
    for key in ("methods", "benchmarks", "tags"):
        values = getattr(sweep, key)
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep.{key} = {values!r} is not allowed: expected each name once")
    seeds = parse_seeds(sweep.seeds, "sweep.seeds")
    fixed = flatten(data.get("set", {}))
    grid = flatten(data.get("grid", {}))
    for key in fixed:
        _check_key(key, "set", sweep.methods, sweep.benchmarks)
    for key, values in grid.items():
        _check_key(key, "grid", sweep.methods, sweep.benchmarks)
        if key in fixed:
            raise ConfigError(f"grid.{key}: also in [set]; give a setting in one of them")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} = {values!r} is not allowed: expected a non-empty list of "
                              "values (one run per value)")
        if len({canonical(v) for v in values}) != len(values):
            raise ConfigError(f"grid.{key} = {values!r} is not allowed: expected distinct values")
    for key, value in [*(("set." + k, v) for k, v in fixed.items()),
                       *(("grid." + k, v) for k, vs in grid.items() for v in vs)]:
        try:
            toml_literal(value)  # a value that cannot travel as --set (a date) fails now
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    names = _names(data.get("names", {}), grid)
    return SweepSpec(path, sweep, seeds, fixed, grid, names,
                     build(LocalSection, data.get("local", {}), "local"),
                     build(SlurmSection, _minutes_as_text(data.get("slurm", {})), "slurm"))


def _minutes_as_text(table: dict[str, Any]) -> dict[str, Any]:
    """``time = 30`` (minutes, an integer in TOML) is read like ``time = "30"``."""
    time = table.get("time")
    if isinstance(time, int) and not isinstance(time, bool):
        return {**table, "time": str(time)}
    return table


def _names(table: dict[str, Any], grid: dict[str, list[Any]]) -> dict[tuple[str, str], str]:
    """``"methods.adversarial.input=entropy" = "advent"``: the name of runs with that grid value."""
    import tomllib

    out: dict[tuple[str, str], str] = {}
    for entry, name in table.items():
        key, sep, raw = entry.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in grid:
            known = ", ".join(grid) or "none"
            raise ConfigError(f"names.{entry!r}: expected \"KEY=VALUE\" with KEY a [grid] key "
                              f"(grid keys: {known})")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        if canonical(value) not in {canonical(v) for v in grid[key]}:
            raise ConfigError(f"names.{entry!r}: {raw} is not one of grid.{key} = "
                              f"{[toml_literal(v) for v in grid[key]]}")
        if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
            raise ConfigError(f"names.{entry!r} = {name!r} is not allowed: expected a name without spaces")
        out[(key, canonical(value))] = name
    return out
