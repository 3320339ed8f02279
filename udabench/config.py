"""udabench.toml -> typed configs.

Precedence: built-in defaults < udabench.toml < ``--set a.b=c`` < explicit CLI flags.
Every key is checked against a dataclass schema; unknown keys and wrong types are rejected with
the file, the key, the line and a "did you mean" hint.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udabench.errors import ConfigError
from udabench.registry import did_you_mean

CONFIG_FILE = "udabench.toml"
DATA_ENV = "UDABENCH_DATA"


@dataclass
class PathsConfig:
    data_root: Path = Path("data")  # datasets (and generated MiniCity) live below this
    output_dir: Path = Path("runs")  # run directories and the run store


@dataclass
class TrainConfig:
    """Engine settings shared by every method (a method's own recipe lives in its config)."""

    iters: int = 0  # 0 = the benchmark's default length
    decay_iters: int = 0  # poly-decay horizon; 0 = same as iters (classic recipes decay longer)
    batch_size: int = 0  # per domain, effective over all GPUs; 0 = the benchmark's default
    grad_accum: int = 0  # micro-steps per optimiser step; 0 = derived from batch size and GPUs
    num_workers: int = 2
    eval_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 0  # 0 = the benchmark's default
    log_every: int = 10
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    channels_last: bool = True
    compile: bool = False
    clip_grad: float = 0.0  # max grad norm; 0 = no clipping
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_flip: bool = False
    eval_scales: tuple[float, ...] = (1.0,)


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: dict[str, Any] = field(default_factory=dict)  # segmenter overrides, checked on build
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "built-in defaults"  # which file the values came from, for messages

    def method_overrides(self, name: str) -> dict[str, Any]:
        return dict(self.methods.get(name, {}))

    def benchmark_overrides(self, name: str) -> dict[str, Any]:
        return dict(self.benchmarks.get(name, {}))


# --- typed conversion -------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML value to the annotated type, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # TOML accepts nan and inf; no setting means them
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        return Path(value).expanduser()
    raise ConfigError(f"{where}: unsupported setting type {_type_name(tp)}")


def build(cls: type, values: dict[str, Any], where: str, base: Any = None) -> Any:
    """Instantiate dataclass ``cls`` (or update ``base``) from ``values``, strictly typed."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{where}: unknown key '{key}'{did_you_mean(key, names)}; known: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    return cls(**kwargs)


def apply_overrides(obj: Any, overrides: dict[str, Any], where: str) -> Any:
    """A copy of dataclass instance ``obj`` with ``overrides`` applied (typed, strict)."""
    return build(type(obj), overrides, where, base=obj)


# --- --set parsing ----------------------------------------------------------------------------

_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+$")


def parse_set(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (['a', 'b'], value); the value is read as a TOML value, else as a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(
            f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set train.iters=2000 "
            "or --set methods.clst.w_cl=0.5"
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def merge_sets(data: dict[str, Any], items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Deep-merge ``--set`` items into the raw TOML dict (later items win)."""
    out = _deep_copy(data)
    for item in items:
        path, value = parse_set(item)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


# --- loading ----------------------------------------------------------------------------------


def _line_of(text: str, key: str) -> str:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", line) or line.strip() == f"[{key}]":
            return f":{number}"
    return ""


def find_config_file(explicit: Path | None = None) -> Path | None:
    """The explicit file, else ./udabench.toml when present, else None (built-in defaults)."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return explicit
    candidate = Path.cwd() / CONFIG_FILE
    return candidate if candidate.is_file() else None


def load_config(path: Path | None = None, sets: tuple[str, ...] | list[str] = ()) -> Config:
    """Read udabench.toml (if any), apply ``--set`` items and the env var, return a typed Config."""
    file = find_config_file(path)
    text, data = "", {}
    if file is not None:
        text = file.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: malformed TOML: {exc}") from None
    where = str(file) if file else "built-in defaults"
    try:
        return _from_dict(merge_sets(data, sets), where)
    except ConfigError as exc:
        msg = str(exc)
        if file is not None and msg.startswith(where + ": "):
            # Point at the line of the offending key when it is in the file.
            rest = msg[len(where) + 2 :]
            key = re.search(r"(?:unknown key '([^']+)')|\.([\w-]+): ", rest)
            name = next((g for g in key.groups() if g), "") if key else ""
            msg = f"{where}{_line_of(text, name) if name else ''}: {rest}"
        raise ConfigError(msg) from None


def _from_dict(data: dict[str, Any], where: str) -> Config:
    sections = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
    for key, value in data.items():
        if key not in sections:
            raise ConfigError(
                f"{where}: unknown section [{key}]{did_you_mean(key, sections)}; "
                f"known: {', '.join(sections)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a [table], got {value!r}")
    paths = build(PathsConfig, data.get("paths", {}), f"{where}: paths")
    env = os.environ.get(DATA_ENV)
    if env:
        paths = dataclasses.replace(paths, data_root=Path(env).expanduser())
    from udabench.registry import BENCHMARKS, METHODS

    for kind, registry in (("benchmarks", BENCHMARKS), ("methods", METHODS)):
        for name, table in data.get(kind, {}).items():
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: {kind}.{name} must be a [table], got {table!r}")
            if name not in registry:  # a misspelt name would silently drop its settings
                raise ConfigError(
                    f"{where}: [{kind}.{name}] names no known {registry.kind}"
                    f"{did_you_mean(name, registry.names())}; known: {', '.join(registry.names())}"
                )
    return Config(
        paths=paths,
        train=build(TrainConfig, data.get("train", {}), f"{where}: train"),
        model=dict(data.get("model", {})),
        benchmarks={k: dict(v) for k, v in data.get("benchmarks", {}).items()},
        methods={k: dict(v) for k, v in data.get("methods", {}).items()},
        source=where,
    )
