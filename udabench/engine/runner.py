"""From a resolved plan to a finished run directory: the data flow of one run.

benchmark -> datasets/loaders -> segmenter -> method -> trainer -> evaluator -> result.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from udabench.config import TrainConfig, apply_overrides, build
from udabench.data.loaders import InfiniteLoader
from udabench.engine.checkpoint import load_checkpoint, seed_everything
from udabench.engine.devices import amp_settings, peak_memory_bytes, place, rank0_first
from udabench.engine.evaluator import EvalSettings, evaluate
from udabench.engine.rundir import RunDir, environment, new_run_id, read_json, write_json
from udabench.engine.trainer import LoopSettings, Trainer, throughput
from udabench.errors import UserError
from udabench.method import Method, MethodContext
from udabench.models import SegmenterConfig, build_segmenter
from udabench.registry import BENCHMARKS, METHODS
from udabench.results.store import index_run, store_path

@dataclass(frozen=True)
class RunDefaults:
    """Training length and network per benchmark family: not protocol (not in the spec hash),
    but recorded in every run's config.json. Any of it can be overridden from udabench.toml."""

    iters: int
    decay_iters: int
    batch_size: int
    checkpoint_every: int
    model: SegmenterConfig
    # Method settings every method on this benchmark starts from (only keys its config has).
    method: tuple[tuple[str, Any], ...] = ()


# The classic DeepLabV2 recipe: batch 1+1, decay horizon 250k, stop at 120k (methods.md).
REAL_DEFAULTS = RunDefaults(120_000, 250_000, 1, 5_000, SegmenterConfig())
# MiniCity: a tiny backbone trained from scratch, so that a full CLST run (about twice the cost
# of a source-only step) fits 5 minutes on 2 CPU cores. The papers' lr of 2.5e-4 fine-tunes a
# pretrained network; from scratch it barely moves in 300 steps, hence lr 0.01 for every method.
# The discriminator shrinks with the segmenter: resnet-tiny is 4x narrower than ResNet-101's
# stages (16-128 vs 64-512 channels), so ndf 64 -> 16 (at 64, D cost 6x the segmenter's step).
MINICITY_DEFAULTS = RunDefaults(
    300, 300, 8, 100, SegmenterConfig(backbone="resnet-tiny", init="scratch", bn_mode="frozen_affine"),
    method=(("lr", 0.01), ("ndf", 16)),
)


def run_defaults(bench: Any) -> RunDefaults:
    return MINICITY_DEFAULTS if getattr(bench, "minicity", None) is not None else REAL_DEFAULTS


@dataclass
class DataSplits:
    source: Any  # labelled source train, training transforms
    target_train: Any  # target train WITHOUT labels, training transforms
    target_val: Any  # labelled target val at full label resolution
    target_images: Any  # target train without labels or augmentation (for pseudo-label rounds)
    target_train_labelled: Any | None = None  # oracle only


def data_splits(bench: Any, data_root: Path, labelled_target: bool, console: Any = None) -> DataSplits:
    from udabench.data.datasets import build_dataset
    from udabench.data.transforms import ResizeImage

    source, target, val = bench.datasets(data_root, console)
    _, target_root = bench.roots(data_root, console)
    size = (bench.target_train_size[1], bench.target_train_size[0])
    images = build_dataset(bench.target_kind, target_root, "train", with_labels=False,
                           transform=ResizeImage(size, bench.interpolation))
    labelled = bench.target_train_labelled(data_root, console) if labelled_target else None
    return DataSplits(source, target, val, images, labelled)


# Settings that change where/how fast a run goes but not its numbers: left out of the config hash.
_NOT_HASHED = ("num_workers", "log_every", "eval_every", "checkpoint_every", "device", "compile")


@dataclass
class RunPlan:
    """Everything that defines a run, fully resolved (saved as config.json)."""

    method: str
    benchmark: str
    seed: int
    train: TrainConfig
    model: SegmenterConfig
    method_config: dict[str, Any]
    data_root: str
    output_dir: str
    spec_hash: str = ""
    benchmark_overrides: dict[str, Any] = field(default_factory=dict)

    def bench(self) -> Any:
        """The benchmark spec this run uses ([benchmarks.<name>] overrides applied)."""
        spec = BENCHMARKS.get(self.benchmark)
        return spec.with_overrides(self.benchmark_overrides) if self.benchmark_overrides else spec

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def config_hash(self) -> str:
        """Hash of every setting that changes numbers (not the seed: seeds are aggregated)."""
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in _NOT_HASHED}
        payload = {
            "method": self.method, "benchmark": self.benchmark, "spec": self.spec_hash,
            "train": train, "model": dataclasses.asdict(self.model), "method_config": self.method_config,
        }
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
        )


def resolve_plan(
    method: str, benchmark: str, seed: int, train: TrainConfig, model_overrides: dict[str, Any],
    method_overrides: dict[str, Any], benchmark_overrides: dict[str, Any], data_root: Path,
    output_dir: Path,
) -> RunPlan:
    """Fill the zeros of TrainConfig from the benchmark and check every override against its schema."""
    bench = BENCHMARKS.get(benchmark)
    if benchmark_overrides:  # a changed protocol gets its own spec hash, so it never mixes
        bench = bench.with_overrides(benchmark_overrides)
    method_cls = METHODS.get(method)
    d = run_defaults(bench)
    train = dataclasses.replace(
        train,
        iters=train.iters or d.iters,
        decay_iters=train.decay_iters or (train.iters if train.iters else d.decay_iters),
        batch_size=train.batch_size or d.batch_size,
        checkpoint_every=train.checkpoint_every or d.checkpoint_every,
    )
    known = {f.name for f in dataclasses.fields(method_cls.Config)}
    base = {k: v for k, v in d.method if k in known}
    method_cfg = apply_overrides(method_cls.Config(), {**base, **method_overrides}, f"methods.{method}")
    model = dataclasses.replace(d.model, **method_cls.model_defaults(method_cfg))
    model = apply_overrides(model, model_overrides, "model")
    return RunPlan(
        method=method, benchmark=benchmark, seed=seed, train=train, model=model,
        method_config=dataclasses.asdict(method_cfg), data_root=str(data_root),
        output_dir=str(output_dir), spec_hash=bench.hash(), benchmark_overrides=benchmark_overrides,
    )


def _micro_batch(batch_size: int, world: int, accum: int) -> tuple[int, int]:
    """Per-process micro-batch and accumulation steps for an effective batch independent of GPUs."""
    accum = accum or 1
    if batch_size % (world * accum):
        raise UserError(
            f"train.batch_size={batch_size} is not divisible by {world} process(es) x "
            f"{accum} accumulation step(s); choose batch_size or train.grad_accum so it divides"
        )
    return batch_size // (world * accum), accum


def build_method(plan: RunPlan, bench: Any, sets: Any, placement: Any, scratch: Path,
                 amp_dtype: torch.dtype | None) -> tuple[Method, torch.nn.Module]:
    """The segmenter and the method around it, on the placement's device."""
    method_cls = METHODS.get(plan.method)
    segmenter = build_segmenter(plan.model, num_classes=bench.num_classes)
    ctx = MethodContext(
        num_classes=bench.num_classes, device=placement.device, seed=plan.seed,
        total_iters=plan.train.iters, target_train_size=len(sets.target_train),
        target_images=sets.target_images, scratch_dir=scratch,
        rank=placement.rank, world_size=placement.world_size, amp_dtype=amp_dtype,
    )
    method_cfg = build(method_cls.Config, plan.method_config, f"methods.{plan.method}")
    return method_cls(segmenter, method_cfg, ctx).to(placement.device), segmenter


class Run:
    """One run: built from a plan (new) or from a run directory (resume)."""

    def __init__(self, plan: RunPlan, run_dir: RunDir, console: Console | None = None):
        self.plan, self.run_dir = plan, run_dir
        self.console = console or Console()

    def execute(self, resume: bool = False, progress: bool = True) -> dict[str, Any]:
        plan = self.plan
        placement = place(plan.train.device)
        log = self.console.print if placement.is_main else (lambda *a, **k: None)
        if placement.notice:
            log(f"[yellow]notice:[/] {placement.notice}")
        bench = plan.bench()
        if bench.hash() != plan.spec_hash:
            raise UserError(
                f"benchmark '{plan.benchmark}' changed since this run started (spec {plan.spec_hash} "
                f"vs {bench.hash()}); start a new run"
            )
        method_cls = METHODS.get(plan.method)
        seed_everything(plan.seed)
        amp_dtype, use_scaler = amp_settings(plan.train.amp, placement.device)
        micro, accum = _micro_batch(plan.train.batch_size, placement.world_size, plan.train.grad_accum)

        data_root = Path(plan.data_root)
        with rank0_first(placement.world_size, placement.is_main):  # rank 0 generates MiniCity
            sets = data_splits(bench, data_root, method_cls.uses_target_labels, self.console)
        source_ds = sets.target_train_labelled if method_cls.uses_target_labels else sets.source
        loader_kw = dict(num_workers=plan.train.num_workers, rank=placement.rank, world_size=placement.world_size)
        source = InfiniteLoader(source_ds, micro, plan.seed, "source", **loader_kw)
        target = (
            InfiniteLoader(sets.target_train, micro, plan.seed, "target", **loader_kw)
            if method_cls.uses_target else None
        )

        method, segmenter = build_method(plan, bench, sets, placement, self.run_dir.scratch, amp_dtype)
        channels_last = plan.train.channels_last and placement.device.type == "cuda"
        if channels_last:
            method.to(memory_format=torch.channels_last)
        if plan.train.compile:
            segmenter.compile()

        eval_settings = EvalSettings(
            input_size=(bench.eval_input_size[1], bench.eval_input_size[0]), align_corners=bench.align_corners,
            flip=plan.train.eval_flip, scales=tuple(plan.train.eval_scales),
        )

        def run_eval(step: int) -> tuple[dict[str, float], Any]:
            name, net = method.eval_network()
            result = evaluate(net, sets.target_val, eval_settings, placement.device, amp_dtype,
                              placement.rank, placement.world_size, plan.train.num_workers, progress)
            score = result.score(bench.subsets, bench.convention)
            return {f"eval/mIoU{s}": v * 100 for s, v in score.miou.items()}, (name, result, score)

        settings = LoopSettings(
            iters=plan.train.iters, decay_iters=plan.train.decay_iters, grad_accum=accum,
            log_every=plan.train.log_every, checkpoint_every=plan.train.checkpoint_every,
            eval_every=plan.train.eval_every, clip_grad=plan.train.clip_grad,
            amp_dtype=amp_dtype, use_scaler=use_scaler,
        )
        trainer = Trainer(method, source, target, settings, self.run_dir, placement.device,
                          placement.rank, placement.world_size, lambda s: run_eval(s)[0], progress)
        extra = {"config_hash": plan.config_hash(), "spec_hash": plan.spec_hash, "method_name": plan.method}
        if resume and placement.is_main:
            self.run_dir.remove_stale_temporaries()
        if resume and self.run_dir.checkpoint.exists():
            state = load_checkpoint(self.run_dir.checkpoint, map_location=placement.device)
            for key in ("config_hash", "method_name"):
                if state.get(key) != extra[key]:
                    raise UserError(
                        f"checkpoint {self.run_dir.checkpoint} belongs to another configuration "
                        f"({key} {state.get(key)} vs {extra[key]}); it cannot resume this run"
                    )
            trainer.load_state_dict(state)
            self.run_dir.truncate_metrics(trainer.step)
            log(f"resuming {self.run_dir.path} at iteration {trainer.step}/{plan.train.iters}")
        elif placement.is_main:
            if resume:  # killed before its first checkpoint: start again, without its log lines
                self.run_dir.truncate_metrics(0)
            write_json(self.run_dir.path / "env.json", environment(placement.device, placement.world_size))

        trainer.fit(extra)
        eval_started = time.perf_counter()
        _, (network, result, score) = run_eval(trainer.step)
        eval_seconds = time.perf_counter() - eval_started
        record = self._record(bench, method_cls, segmenter, network, result, score, eval_settings,
                              trainer, placement, eval_seconds, micro, accum, amp_dtype, channels_last)
        if placement.is_main:
            self.run_dir.save_per_image(result.ids, result.per_image)
            write_json(self.run_dir.result_file, record)
            index_run(store_path(plan.output_dir), self.run_dir.path)
        return record

    def _record(self, bench, method_cls, segmenter, network, result, score, eval_settings, trainer,
                placement, eval_seconds, micro, accum, amp_dtype, channels_last) -> dict[str, Any]:
        """The self-describing result record (one per run; aggregated by udabench.results)."""
        plan = self.plan
        wall = trainer.train_seconds + eval_seconds
        gpus = placement.world_size if placement.device.type == "cuda" else 0
        return {
            "schema": 1,
            "run_id": self.run_dir.path.name,
            "run_dir": str(self.run_dir.path),
            "method": plan.method,
            "uda": not method_cls.uses_target_labels,
            "benchmark": plan.benchmark,
            "spec_hash": plan.spec_hash,
            "config_hash": plan.config_hash(),
            "seed": plan.seed,
            "iters": trainer.step,
            "subsets": list(bench.subsets),
            "headline": bench.subsets[0],
            "convention": score.convention,
            "miou": {k: v * 100 for k, v in score.miou.items()},
            "iou": {k: v * 100 for k, v in score.iou.items()},
            "pixel_accuracy": score.pixel_accuracy * 100,
            "eval": {**eval_settings.describe(), "network": network, "checkpoint": "last",
                     "images": len(result.ids)},
            "model": segmenter.describe() if hasattr(segmenter, "describe") else {},
            "train": {"batch_size": plan.train.batch_size, "micro_batch": micro, "grad_accum": accum,
                      "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
                      "channels_last": channels_last, "world_size": placement.world_size},
            "compute": {
                "train_seconds": trainer.train_seconds,
                "eval_seconds": eval_seconds,
                "wall_seconds": wall,
                "gpu_hours": wall * gpus / 3600,
                "peak_memory_bytes": peak_memory_bytes(placement.device),
                "images_per_second": throughput(trainer.images_seen, trainer.train_seconds),
                "device": str(placement.device),
            },
            "method_config": plan.method_config,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


def new_run(plan: RunPlan, out: Path | None = None) -> RunDir:
    base = Path(out) if out else Path(plan.output_dir) / plan.benchmark / plan.method
    path = base / new_run_id(plan.seed, plan.config_hash())
    if path.exists():
        raise UserError(f"run directory {path} already exists; nothing was overwritten")
    run_dir = RunDir(path).create()
    write_json(run_dir.config_file, plan.to_dict())
    return run_dir


def open_run(path: Path) -> tuple[RunPlan, RunDir]:
    """A run directory made by ``udabench run`` (for --resume and eval)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a udabench run directory (no config.json in it)")
    try:
        plan = RunPlan.from_dict(read_json(path / "config.json"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # hand-edited or foreign file
        raise UserError(f"{path / 'config.json'} is not a udabench run configuration "
                        f"({type(exc).__name__}: {exc}); it cannot be resumed or evaluated") from None
    return plan, RunDir(path)
