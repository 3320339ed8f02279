"""From settings to a resolved run plan, checked before any work starts.

``resolve_plan`` fills the benchmark's run defaults, the method's published schedule (real
protocols) and the user's settings into one ``RunPlan`` (saved as config.json). ``preflight``
checks everything that can be checked without training (device, AMP, batch split, the method's
needs, dataset folders, ``train.init_from``) so a bad value fails in seconds, not after hours.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udabench.checkpoints import file_checksum
from udabench.config import DATA_ENV, TrainConfig, apply_overrides, build
from udabench.errors import ConfigError, UserError
from udabench.models import SegmenterConfig
from udabench.registry import BENCHMARKS, METHODS

# Settings that change where/how fast a run goes but not its numbers: left out of the config hash
# (init_from enters it through init_identity, see RunPlan.config_hash).
NOT_HASHED = ("num_workers", "log_every", "eval_every", "checkpoint_every", "device", "compile",
              "init_from", "keep_checkpoints", "best_checkpoint", "loggers", "wandb_project",
              "wandb_mode")


@dataclass
class RunPlan:
    """Everything that defines a run, fully resolved (saved as config.json)."""

    method: str
    benchmark: str
    seed: int
    train: TrainConfig
    model: SegmenterConfig
    method_config: dict[str, Any]
    data_root: str  # absolute
    output_dir: str  # absolute
    spec_hash: str = ""
    benchmark_overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # the user's name for the run (--name), shown by tables
    tags: list[str] = field(default_factory=list)
    # What the weights were initialised from when not model.init alone: resolved once, at the
    # start (run id, run directory, checkpoint file and its sha256). Part of the config hash.
    init_from: dict[str, Any] | None = None
    # Where each non-default setting came from (file:line, --set, benchmark, method recipe), for
    # `udabench config show`; paths as the user spelled them. Neither changes numbers.
    origins: dict[str, str] = field(default_factory=dict)
    spelled: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)  # paths.manifests (data prepare --out)

    def bench(self) -> Any:
        """The benchmark spec this run uses ([benchmarks.<name>] overrides applied)."""
        spec = BENCHMARKS.get(self.benchmark)
        return spec.with_overrides(self.benchmark_overrides) if self.benchmark_overrides else spec

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def config_hash(self) -> str:
        """Hash of every setting that changes numbers (not the seed: seeds are aggregated)."""
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in NOT_HASHED}
        payload = {
            "method": self.method, "benchmark": self.benchmark, "spec": self.spec_hash,
            "train": train, "model": self.model.hash_dict(), "method_config": self.method_config,
        }
        if self.init_from:  # only when used, so runs without it keep the hashes they always had
            payload["init_from"] = init_identity(self.init_from, self.seed)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunPlan":
        return cls(
            method=d["method"], benchmark=d["benchmark"], seed=int(d["seed"]),
            train=build(TrainConfig, d["train"], "config.json: train"),
            model=build(SegmenterConfig, d["model"], "config.json: model"),
            method_config=dict(d["method_config"]), data_root=d["data_root"],
            output_dir=d["output_dir"], spec_hash=d.get("spec_hash", ""),
            benchmark_overrides=d.get("benchmark_overrides", {}),
            name=d.get("name"), tags=list(d.get("tags") or []), init_from=d.get("init_from"),
            origins=dict(d.get("origins") or {}), spelled=dict(d.get("spelled") or {}),
            manifests=dict(d.get("manifests") or {}),
        )


def method_schedule(method_cls: Any, method_cfg: Any, bench: Any) -> dict[str, int]:
    """The method's published schedule on this benchmark (iters, decay_iters, batch_size), when
    the benchmark uses published schedules (the real protocols; MiniCity has one budget)."""
    if not bench.defaults.published_schedules:
        return {}
    return dict(method_cls.published_schedule(method_cfg, bench))


def require_training_step(name: str, method_cls: type) -> None:
    """A method (a plug-in's too) must define ``training_step``: refused while planning, not at
    step 1 of a run whose data and model were already built."""
    from udabench.method import Method

    if getattr(method_cls, "training_step", None) is Method.training_step:
        raise UserError(f"method '{name}' ({method_cls.__module__}.{method_cls.__name__}) defines "
                        "no training_step(source, target, step); add it (docs/extending.md)")


def resolve_plan(
    method: str, benchmark: str, seed: int, train: TrainConfig, model_overrides: dict[str, Any],
    method_overrides: dict[str, Any], benchmark_overrides: dict[str, Any], data_root: Path,
    output_dir: Path, *, name: str | None = None, tags: tuple[str, ...] | list[str] = (),
    origins: dict[str, str] | None = None, spelled: dict[str, str] | None = None,
    manifests: dict[str, str] | None = None,
) -> RunPlan:
    """Benchmark run defaults < the method's published schedule < the user's settings."""
    if seed < 0:
        raise UserError(f"seed {seed}: expected a non-negative integer")
    bench = BENCHMARKS.get(benchmark)
    if benchmark_overrides:  # a changed protocol gets its own spec hash, so it never mixes
        bench = bench.with_overrides(benchmark_overrides)
    method_cls = METHODS.get(method)
    require_training_step(method, method_cls)
    d = bench.defaults
    origins = dict(origins or {})
    known = {f.name for f in dataclasses.fields(method_cls.Config)}
    base = d.method_settings(method, known)
    for key in base:
        origins.setdefault(f"methods.{method}.{key}", f"benchmark {bench.name}")
    # The benchmark's size rescales the recipe's rates, counts and sizes by their declared units.
    recipe_cfg = method_cls.Config()
    published_stop = method_cls.published_schedule(recipe_cfg, bench).get("iters")
    for key, (value, why) in d.rescaled(recipe_cfg, published_stop, train.iters or d.iters).items():
        if key not in base:  # a benchmark's explicit default for the method wins
            base[key] = value
            origins.setdefault(f"methods.{method}.{key}", f"benchmark {bench.name} ({why})")
    method_cfg = apply_overrides(method_cls.Config(), {**base, **method_overrides}, f"methods.{method}")
    schedule = method_schedule(method_cls, method_cfg, bench)
    recipe = f"{method}'s published schedule on {bench.name}"

    def fill(key: str, fallback: Any, fallback_origin: str) -> Any:
        if getattr(train, key):  # the user's value (its origin is already recorded)
            return getattr(train, key)
        origins[f"train.{key}"] = recipe if key in schedule else fallback_origin
        return schedule.get(key) or fallback

    pick = {k: fill(k, getattr(d, k), f"benchmark {bench.name}")
            for k in ("iters", "batch_size", "checkpoint_every")}
    # The decay horizon follows the stop when the user shortens a run (poly decay reaches 0 at
    # the end), else the recipe's own horizon (classic recipes decay past their stop).
    if train.iters and not train.decay_iters:
        decay = train.iters
        origins["train.decay_iters"] = "follows train.iters"
    else:
        decay = fill("decay_iters", d.decay_iters, f"benchmark {bench.name}")
    train = dataclasses.replace(train, decay_iters=decay, **pick)
    recipe_model = method_cls.model_defaults(method_cfg)
    scaled = d.scaled_network(recipe_model.get("backbone", ""))
    recipe_model = {**recipe_model, **scaled}
    model_base = {**d.model_settings(), **recipe_model}
    for key in model_base:
        origins.setdefault(f"model.{key}", f"benchmark {bench.name} (small stand-in of the recipe's "
                           f"network)" if key in scaled else f"{method}'s recipe" if key in recipe_model
                           else f"benchmark {bench.name}")
    model = apply_overrides(SegmenterConfig(), model_base, "model")
    model = apply_overrides(model, model_overrides, "model")
    method_cls.check_plan(method_cfg, model)
    return RunPlan(
        method=method, benchmark=benchmark, seed=seed, train=train, model=model,
        method_config=dataclasses.asdict(method_cfg), data_root=str(data_root),
        output_dir=str(output_dir), spec_hash=bench.hash(), benchmark_overrides=benchmark_overrides,
        name=name or None, tags=list(tags), origins=origins, spelled=dict(spelled or {}),
        manifests=dict(manifests or {}),
    )


def micro_batch(batch_size: int, world: int, accum: int) -> tuple[int, int]:
    """Per-process micro-batch and accumulation steps for an effective batch independent of GPUs."""
    accum = accum or 1
    if batch_size % (world * accum):
        raise UserError(
            f"train.batch_size={batch_size} is not divisible by {world} process(es) x "
            f"{accum} accumulation step(s); choose batch_size or train.grad_accum so it divides"
        )
    return batch_size // (world * accum), accum


def data_root_of(plan: RunPlan) -> Path:
    """The run's data root; UDABENCH_DATA wins (datasets moved since the run was made)."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser().resolve() if env else Path(plan.data_root)


def preflight(plan: RunPlan, world_size: int = 1) -> None:
    """Everything that can fail without training, checked now (seconds) instead of later (hours)."""
    from udabench.engine.devices import amp_settings, select_device

    from udabench.data.manifest import configure_manifests

    bench = plan.bench()
    configure_manifests(plan.manifests)
    device, _ = select_device(plan.train.device)
    amp_settings(plan.train.amp, device)
    micro_batch(plan.train.batch_size, world_size, plan.train.grad_accum)
    if bench.minicity is None:
        bench.roots(data_root_of(plan))  # real datasets: their folders must exist now
    from udabench.engine.loggers import check_loggers

    check_loggers(plan.train.loggers)
    if plan.train.eval_every and plan.train.eval_every > plan.train.iters:
        raise ConfigError(f"train.eval_every = {plan.train.eval_every} is not allowed: it exceeds "
                          f"train.iters = {plan.train.iters}; use 0 to evaluate only at the end")


# --- train.init_from: starting from a finished run ------------------------------------------------


def _finished_run(run_dir: Path, token: str) -> dict[str, Any]:
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not (run_dir / "result.json").is_file():
        raise UserError(f"train.init_from = {token!r}: {run_dir} has not finished (no result.json); "
                        "start from a finished run")
    if not checkpoint.is_file():
        raise UserError(f"train.init_from = {token!r}: {checkpoint} does not exist")
    record = json.loads((run_dir / "result.json").read_text())
    return {"run_id": record.get("run_id", run_dir.name), "run_dir": str(run_dir.resolve()),
            "method": record.get("method"), "checkpoint": str(checkpoint.resolve()),
            "config_hash": record.get("config_hash"), "seed": record.get("seed")}


def init_identity(init: dict[str, Any], seed: int) -> Any:
    """What ``init_from`` contributes to a run's config hash. A finished run enters as its
    *configuration* (its config hash) and whether it had this run's seed, not as its weights'
    checksum: CBST seeds 0-2, each started from the source-only run of its own seed, are one
    configuration with three seeds (their weights differ by seed, as every run's do). A plain
    weights file, or a run recorded before its config hash was, enters as the file's sha256."""
    if init.get("config_hash") and init.get("seed") is not None:
        same = int(init["seed"]) == int(seed)
        return {"run_config": init["config_hash"], "seed": "same" if same else int(init["seed"])}
    return init.get("sha256")


def resolve_init_from(token: str, output_dir: Path) -> dict[str, Any] | None:
    """``train.init_from``: a finished run directory, a checkpoint/weights file, or a run id or
    run name of the run store; ``none`` (or "") = no run. Recorded with the file's sha256."""
    if token in ("", "none"):
        return None
    path = Path(token).expanduser()
    if path.is_dir():
        found = _finished_run(path, token)
    elif path.is_file():
        found = {"run_id": None, "run_dir": None, "method": None, "checkpoint": str(path.resolve()),
                 "config_hash": None, "seed": None}
    else:
        from udabench.results.view import load_records

        hits = [r for r in load_records(output_dir) if token in (r.get("run_id"), r.get("name"))]
        if not hits:
            raise UserError(f"train.init_from = {token!r}: no such run directory, file, run id or "
                            f"run name in {output_dir} (see `udabench runs`)")
        if len(hits) > 1:
            raise UserError(f"train.init_from = {token!r} names {len(hits)} runs "
                            f"({', '.join(r['run_id'] for r in hits)}); give a run id or directory")
        found = _finished_run(Path(hits[0]["run_dir"]), token)
    found["sha256"] = file_checksum(Path(found["checkpoint"]))
    return found


def find_finished(plan: RunPlan) -> Path | None:
    """The newest finished run of the store with this plan's config hash and seed, if any."""
    from udabench.results.view import load_records

    want = plan.config_hash()
    hits = [r for r in load_records(plan.output_dir, plan.benchmark)
            if r.get("config_hash") == want and int(r.get("seed", -1)) == plan.seed]
    return Path(hits[-1]["run_dir"]) if hits else None
