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
from typing import Any, ClassVar

from udabench.errors import ConfigError
from udabench.registry import did_you_mean
from udabench.settings import Allowed, Settings, setting

CONFIG_FILE = "udabench.toml"
DATA_ENV = "UDABENCH_DATA"


@dataclass
class PathsConfig(Settings):
    WHERE: ClassVar[str] = "paths"

    # Relative paths are resolved when the config is loaded (against the folder of the
    # udabench.toml that names them, else the current directory) and recorded absolute.
    data_root: Path = setting(Path("data"), free=True, doc="datasets (and generated MiniCity)")
    output_dir: Path = setting(Path("runs"), free=True, doc="run directories and the run store")
    manifests: dict[str, str] = setting(default_factory=dict, free=True,
                                        doc="dataset name -> manifest written elsewhere "
                                            "(`data prepare --out`), e.g. {gta5 = \"/x/manifest.json\"}")


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass
class TrainConfig(Settings):
    """Engine settings shared by every method (a method's own recipe lives in its config)."""

    WHERE: ClassVar[str] = "train"

    iters: int = setting(0, ge=0, doc="training iterations; 0 = the benchmark's default")
    decay_iters: int = setting(0, ge=0, doc="poly-decay horizon; 0 = the benchmark's (or iters)")
    batch_size: int = setting(0, ge=0, doc="per domain, over all GPUs; 0 = the benchmark's default")
    grad_accum: int = setting(0, ge=0, doc="micro-steps per optimiser step; 0 = derived")
    num_workers: int = setting(2, ge=0, doc="data loader processes")
    eval_every: int = setting(0, ge=0, doc="evaluate every N iterations; 0 = only at the end")
    checkpoint_every: int = setting(0, ge=0, doc="0 = the benchmark's default")
    log_every: int = setting(10, ge=1, doc="metrics.jsonl line every N iterations")
    amp: str = setting("auto", choices=("auto", "off", "bf16", "fp16"),
                       doc="auto = bf16 on CUDA, off on CPU")
    channels_last: bool = setting(True, free=True, doc="NHWC on CUDA")
    compile: bool = setting(False, free=True, doc="torch.compile the segmenter")
    clip_grad: float = setting(0.0, ge=0, doc="max gradient norm; 0 = no clipping")
    device: str = setting("auto", nonempty=True, doc="auto | cpu | cuda | cuda:N")
    eval_flip: bool = setting(False, free=True, doc="test-time horizontal flip (recorded)")
    eval_scales: tuple[float, ...] = setting((1.0,), min_len=1, item=Allowed(gt=0, le=4),
                                             doc="test-time scales (recorded)")
    init_from: str = setting("", free=True, doc="start from a finished run (directory, run id or "
                             "name) or weights file; none = model.init only; '' = the method's "
                             "published protocol (e.g. CBST starts from source-only)")
    keep_checkpoints: int = setting(0, ge=0, doc="also keep the K newest checkpoints/iter_N.pt "
                                                 "(written every checkpoint_every); 0 = last.pt only")
    best_checkpoint: bool = setting(False, free=True, doc="keep checkpoints/best.pt by validation "
                                    "mIoU (needs eval_every): TARGET-LABEL MODEL SELECTION, marked so")
    loggers: tuple[str, ...] = setting((), item=Allowed(choices=("tensorboard", "wandb")),
                                       doc="trackers beside metrics.jsonl: tensorboard, wandb")
    wandb_project: str = setting("udabench", nonempty=True)
    wandb_mode: str = setting("offline", choices=("offline", "online"),
                              doc="offline needs no network; `wandb sync` uploads later")

    def check(self) -> None:
        if not _DEVICE.match(self.device):
            raise self.fail("device", "expected auto, cpu, cuda or cuda:N")
        if len(set(self.eval_scales)) != len(self.eval_scales):
            raise self.fail("eval_scales", "expected distinct scales")
        if self.best_checkpoint and not self.eval_every:
            raise self.fail("best_checkpoint", "it needs train.eval_every > 0 (the validation "
                                               "score that picks the best checkpoint)")
        if len(set(self.loggers)) != len(self.loggers):
            raise self.fail("loggers", "expected each logger once")


# --- typed conversion -------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """A TOML value converted to the annotated type ``tp``; a ConfigError naming ``where``."""
    return _coerce(value, tp, where)


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


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: dict[str, Any] = field(default_factory=dict)  # segmenter overrides, checked on build
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "built-in defaults"  # which file the values came from, for messages
    # dotted key ("train.iters", "methods.clst.tau", a section "methods.clst") -> where it was set
    # ("udabench.toml:12", "--set train.iters=5", "UDABENCH_DATA"); absent = built-in default.
    origins: dict[str, str] = field(default_factory=dict)
    # paths as the user spelled them (data_root, output_dir), for display next to the absolute ones
    spelled: dict[str, str] = field(default_factory=dict)

    def method_overrides(self, name: str) -> dict[str, Any]:
        return dict(self.methods.get(name, {}))

    def benchmark_overrides(self, name: str) -> dict[str, Any]:
        return dict(self.benchmarks.get(name, {}))

    def origin(self, key: str) -> str | None:
        """Where a dotted key (or the nearest section above it) was set; None = a default."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            found = self.origins.get(".".join(parts[:n]))
            if found:
                return found
        return None

    def blame(self, exc: ConfigError) -> ConfigError:
        """The same error, prefixed with where the offending key was set (file:line or --set)."""
        return blame(exc, self.origins)


def _error_key(msg: str) -> str | None:
    """The dotted key a ConfigError message is about (messages start with the key)."""
    unknown = re.match(r"^([\w.-]+): unknown key '([^']+)'", msg)
    if unknown:
        return f"{unknown.group(1)}.{unknown.group(2)}"
    section = re.match(r"^unknown section \[([^\]]+)\]", msg)
    if section:
        return section.group(1)
    named = re.match(r"^\[?([A-Za-z_][\w-]*(?:\.[\w-]+)+|[A-Za-z_][\w-]*)\]?(?:\[\d+\])?(?::| =| names| must) ", msg)
    return named.group(1) if named else None


def blame(exc: ConfigError, origins: dict[str, str]) -> ConfigError:
    msg = str(exc)
    key = _error_key(msg)
    if key is None:
        return ConfigError(msg)
    parts = key.split(".")
    # [methods.<name>] and [benchmarks.<name>] are tables of their own: a value of one method is
    # never blamed on a --set of another (their common prefix "methods" says nothing)
    floor = 2 if parts[0] in ("methods", "benchmarks") and len(parts) > 1 else 1
    for n in range(len(parts), floor - 1, -1):
        where = origins.get(".".join(parts[:n]))
        if where:
            return ConfigError(f"{where}: {msg}")
    return ConfigError(msg)


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> line number for every ``key = value`` and ``[section]`` line of a TOML text."""
    out: dict[str, int] = {}
    section: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\[\]]+?)\s*\]", stripped)
        if header:
            section = [p.strip().strip('"') for p in header.group(1).split(".")]
            out.setdefault(".".join(section), number)
            continue
        assign = re.match(r'^"?([A-Za-z0-9_.-]+)"?\s*=', stripped)
        if assign:
            out.setdefault(".".join(section + [assign.group(1)]), number)
    return out


def _leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out.extend(_leaves(v, key + "."))
    return out


def find_config_file(explicit: Path | None = None) -> Path | None:
    """The explicit file, else ./udabench.toml when present, else None (built-in defaults)."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return explicit
    candidate = Path.cwd() / CONFIG_FILE
    return candidate if candidate.is_file() else None


def read_toml(file: Path) -> tuple[str, dict[str, Any]]:
    """(text, data) of a TOML file; anything unreadable is one ConfigError naming the file."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{file}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          "save the file as UTF-8") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        if file.suffix == ".json":
            raise ConfigError(f"{file}: a run's config.json is not a settings file; "
                              "use `udabench run --from RUN_DIR` to rerun a run's settings") from None
        raise ConfigError(f"{file}: malformed TOML: {exc}") from None


def load_config(path: Path | None = None, sets: tuple[str, ...] | list[str] = ()) -> Config:
    """Read udabench.toml (if any), apply ``--set`` items and the env var, return a typed Config.

    Errors name where the offending value was set: ``udabench.toml:12`` or ``--set k=v``.
    """
    file = find_config_file(path)
    text, data = "", {}
    origins: dict[str, str] = {}
    if file is not None:
        text, data = read_toml(file)
        lines = _key_lines(text)
        for key in _leaves(data):
            origins[key] = f"{file}:{lines[key]}" if key in lines else str(file)
        # The file alone must be valid: a bad value there is the file's fault, not a --set's.
        try:
            _from_dict(data, file, set())
        except ConfigError as exc:
            raise blame(exc, origins) from None
    set_keys = set()
    for item in sets:
        path_, _ = parse_set(item)
        set_keys.add(".".join(path_))
        for n in range(1, len(path_) + 1):
            origins[".".join(path_[:n])] = f"--set {item}"
    try:
        cfg = _from_dict(merge_sets(data, sets), file, set_keys)
    except ConfigError as exc:
        raise blame(exc, origins) from None
    env = os.environ.get(DATA_ENV)
    if env:
        origins["paths.data_root"] = DATA_ENV
    cfg.origins = origins
    return cfg


def _absolute(value: Path, base: Path) -> Path:
    value = Path(value).expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def _check_tables(data: dict[str, Any]) -> None:
    """Every [methods.X], [benchmarks.X] and [model] value is checked now, whichever method runs:
    a mistake in a table this run does not use is still a mistake (and would bite the next run)."""
    from udabench.models import SegmenterConfig
    from udabench.registry import BENCHMARKS, METHODS

    for kind, registry in (("benchmarks", BENCHMARKS), ("methods", METHODS)):
        for name, table in data.get(kind, {}).items():
            if not isinstance(table, dict):
                raise ConfigError(f"{kind}.{name} must be a [table], got {table!r}")
            if name not in registry:  # a misspelt name would silently drop its settings
                raise ConfigError(
                    f"[{kind}.{name}] names no known {registry.kind}"
                    f"{did_you_mean(name, registry.names())}; known: {', '.join(registry.names())}"
                )
            if kind == "methods":
                apply_overrides(registry.get(name).Config(), table, f"methods.{name}")
            else:
                registry.get(name).with_overrides(table)
    apply_overrides(SegmenterConfig(), data.get("model", {}), "model")


def load_paths(path: Path | None = None) -> PathsConfig:
    """Only the [paths] of the settings (for listing commands: no registry, no torch import)."""
    file = find_config_file(path)
    data = read_toml(file)[1] if file is not None else {}
    try:
        return _from_dict({"paths": data.get("paths", {})}, file, set(), check_tables=False).paths
    except ConfigError as exc:
        raise blame(exc, {"paths": str(file)} if file else {}) from None


def _from_dict(data: dict[str, Any], file: Path | None, set_keys: set[str],
               check_tables: bool = True) -> Config:
    sections = [f.name for f in dataclasses.fields(Config) if f.init and f.type in
                ("PathsConfig", "TrainConfig", "dict[str, Any]", "dict[str, dict[str, Any]]")]
    for key, value in data.items():
        if key not in sections:
            raise ConfigError(
                f"unknown section [{key}]{did_you_mean(key, sections)}; known: {', '.join(sections)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a [table], got {value!r}")
    raw_paths = data.get("paths", {})
    paths = build(PathsConfig, raw_paths, "paths")
    spelled = {k: str(getattr(paths, k)) for k in ("data_root", "output_dir")}
    # Relative paths from the file are relative to the file; from --set, to the current folder.
    file_dir = file.resolve().parent if file is not None else Path.cwd()
    env = os.environ.get(DATA_ENV)
    if env:
        spelled["data_root"] = env
        paths = dataclasses.replace(paths, data_root=Path(env))
    def base(key: str) -> Path:
        return Path.cwd() if f"paths.{key}" in set_keys else file_dir

    paths = dataclasses.replace(
        paths,
        data_root=_absolute(paths.data_root, Path.cwd() if env else base("data_root")),
        output_dir=_absolute(paths.output_dir, base("output_dir")),
        manifests={k: str(_absolute(Path(str(v)), base("manifests"))) for k, v in paths.manifests.items()},
    )
    if check_tables:
        _check_tables(data)
    return Config(
        paths=paths,
        train=build(TrainConfig, data.get("train", {}), "train"),
        model=dict(data.get("model", {})),
        benchmarks={k: dict(v) for k, v in data.get("benchmarks", {}).items()},
        methods={k: dict(v) for k, v in data.get("methods", {}).items()},
        source=str(file) if file else "built-in defaults",
        spelled=spelled,
    )
