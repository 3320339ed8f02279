"""From a resolved plan to a finished run directory: the data flow of one run.

benchmark -> datasets/loaders -> segmenter -> method -> trainer -> evaluator -> result.json.
"""
from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from udabench.config import build
from udabench.data.loaders import InfiniteLoader
from udabench.data.manifest import configure_manifests
from udabench.engine.checkpoint import load_checkpoint, seed_everything
from udabench.engine.devices import amp_settings, lay_out, peak_memory_bytes, place, rank0_first
from udabench.engine.evaluator import EvalSettings, evaluate
from udabench.engine.loggers import open_trackers
from udabench.engine.plan import (RunPlan, data_root_of, micro_batch, preflight,  # noqa: F401
                                  resolve_plan)
from udabench.engine.rundir import RunDir, environment, new_run_id, read_json, write_json
from udabench.engine.trainer import LoopSettings, Trainer, throughput
from udabench.errors import DataError, UserError
from udabench.method import Method, MethodContext, load_segmenter_weights
from udabench.models import build_segmenter
from udabench.registry import METHODS
from udabench.results.store import index_run, store_path

_micro_batch = micro_batch  # the name older tests import

@dataclass
class DataSplits:
    source: Any  # labelled source train, training transforms
    target_train: Any  # target train WITHOUT labels, training transforms
    target_val: Any  # labelled target val at full label resolution
    target_images: Any  # target train without labels or augmentation (for pseudo-label rounds)
    target_train_labelled: Any | None = None  # oracle only
    target_view: Any = None  # scale -> target train without labels at scale x full resolution


@dataclass
class ScaleImage:
    """Resize each image to ``scale`` x its own size (a label-free view for pseudo-labelling
    passes that the published code runs at a fraction of full resolution, e.g. CBST's 0.9)."""

    scale: float
    interpolation: str = "bilinear"

    def __call__(self, sample: dict[str, Any], gen: Any = None) -> dict[str, Any]:
        from udabench.data.transforms import resize_image

        h, w = sample["image"].shape[-2:]
        size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        return {**sample, "image": resize_image(sample["image"], size, self.interpolation).contiguous()}


def data_splits(bench: Any, data_root: Path, labelled_target: bool, console: Any = None) -> DataSplits:
    from udabench.data.datasets import build_dataset
    from udabench.data.transforms import ResizeImage

    source, target, val = bench.datasets(data_root, console)
    _, target_root = bench.roots(data_root, console)
    size = (bench.target_train_size[1], bench.target_train_size[0])
    images = build_dataset(bench.target_kind, target_root, "train", with_labels=False,
                           transform=ResizeImage(size, bench.interpolation))
    labelled = bench.target_train_labelled(data_root, console) if labelled_target else None

    def target_view(scale: float) -> Any:
        return build_dataset(bench.target_kind, target_root, "train", with_labels=False,
                             transform=ScaleImage(scale, bench.interpolation))

    return DataSplits(source, target, val, images, labelled, target_view)


def build_method(plan: RunPlan, bench: Any, sets: Any, placement: Any, scratch: Path,
                 amp_dtype: torch.dtype | None, load_init: bool = False
                 ) -> tuple[Method, torch.nn.Module]:
    """The segmenter and the method around it, on the placement's device. ``load_init`` loads
    ``plan.init_from``'s weights into the segmenter first (a new run; a resumed or restored run
    gets its weights from its own checkpoint), so teachers and copies start from them too."""
    method_cls = METHODS.get(plan.method)
    segmenter = build_segmenter(plan.model, num_classes=bench.num_classes)
    init = plan.init_from
    if load_init and init:
        load_segmenter_weights(segmenter, Path(init["checkpoint"]), "train.init_from")
    ctx = MethodContext(
        num_classes=bench.num_classes, device=placement.device, seed=plan.seed,
        total_iters=plan.train.iters, target_train_size=len(sets.target_train),
        target_images=sets.target_images, scratch_dir=scratch,
        rank=placement.rank, world_size=placement.world_size, amp_dtype=amp_dtype,
        init_from=(init.get("run_id") or init["checkpoint"]) if init else None,
        source_size=len(sets.source), target_view=sets.target_view,
        source_class_counts=lambda: source_class_counts(sets.source, scratch),
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
        extra = {"config_hash": plan.config_hash(), "spec_hash": plan.spec_hash, "method_name": plan.method}
        state = None
        if resume and self.run_dir.checkpoint.exists():  # checked before anything is built
            state = load_checkpoint(self.run_dir.checkpoint, map_location=placement.device)
            for key in ("config_hash", "method_name"):
                if state.get(key) != extra[key]:
                    raise UserError(
                        f"checkpoint {self.run_dir.checkpoint} belongs to another configuration "
                        f"({key} {state.get(key)} vs {extra[key]}); it cannot resume this run"
                    )
        seed_everything(plan.seed)
        amp_dtype, use_scaler = amp_settings(plan.train.amp, placement.device)
        micro, accum = micro_batch(plan.train.batch_size, placement.world_size, plan.train.grad_accum)

        data_root = data_root_of(plan)
        configure_manifests(plan.manifests)
        with rank0_first(placement.world_size, placement.is_main):  # rank 0 generates MiniCity
            sets = data_splits(bench, data_root, method_cls.uses_target_labels, self.console)
        val_ids = check_validation_set(bench, sets.target_val)
        source_ds = sets.target_train_labelled if method_cls.uses_target_labels else sets.source
        loader_kw = dict(num_workers=plan.train.num_workers, rank=placement.rank, world_size=placement.world_size)
        source = InfiniteLoader(source_ds, micro, plan.seed, "source", **loader_kw)
        target = (
            InfiniteLoader(sets.target_train, micro, plan.seed, "target", **loader_kw)
            if method_cls.uses_target else None
        )

        method, segmenter = build_method(plan, bench, sets, placement, self.run_dir.scratch, amp_dtype,
                                         load_init=state is None)
        sampler = method.source_sampler()
        if sampler is not None:  # the method chooses which source images are loaded (RCS)
            source.set_sampler(sampler)
        channels_last = lay_out(method, plan.train.channels_last, placement.device)
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
            scalars = {f"eval/mIoU{s}": v * 100 for s, v in score.miou.items()}
            iou = score.iou if bench.subsets[0] == "19" else score.iou_convention
            scalars.update({f"eval/IoU/{c}": v * 100 for c, v in iou.items() if v == v})
            if trainer.trackers.wants_images:
                trainer.trackers.images(step, eval_panels(net, sets.target_val, eval_settings,
                                                          placement.device, amp_dtype))
            return scalars, (name, result, score)

        settings = LoopSettings(
            iters=plan.train.iters, decay_iters=plan.train.decay_iters, grad_accum=accum,
            log_every=plan.train.log_every, checkpoint_every=plan.train.checkpoint_every,
            eval_every=plan.train.eval_every, clip_grad=plan.train.clip_grad,
            amp_dtype=amp_dtype, use_scaler=use_scaler,
            keep_checkpoints=plan.train.keep_checkpoints, best_checkpoint=plan.train.best_checkpoint,
        )
        trainer = Trainer(method, source, target, settings, self.run_dir, placement.device,
                          placement.rank, placement.world_size, lambda s: run_eval(s)[0], progress)
        if resume and placement.is_main:
            self.run_dir.remove_stale_temporaries()
        if state is not None:
            trainer.load_state_dict(state)
            self.run_dir.truncate_metrics(trainer.step)
            log(f"resuming {self.run_dir.path} at iteration {trainer.step}/{plan.train.iters}")
        elif placement.is_main:
            if resume:  # killed before its first checkpoint: start again, without its log lines
                self.run_dir.truncate_metrics(0)
            write_json(self.run_dir.path / "env.json", environment(placement.device, placement.world_size))

        trainer.trackers = open_trackers(plan.train.loggers, self.run_dir.path, trainer.step,
                                         {**plan.to_dict(), "run_id": self.run_dir.path.name},
                                         plan.train.wandb_project, plan.train.wandb_mode,
                                         placement.is_main)
        try:
            trainer.fit(extra)
        except BaseException:
            trainer.trackers.close()
            raise
        finally:  # free the loader workers now (a dropped loader waits for the garbage collector)
            for loader in (source, target):
                if loader is not None:
                    loader.close()
        # Training is over: a stop signal now (a scheduler's time limit) must not lose the
        # evaluation; it is held until the result is on disk, then the run ends normally.
        with hold_stop_signals():
            try:
                eval_started = time.perf_counter()
                scalars, (network, result, score) = run_eval(trainer.step)
                eval_seconds = time.perf_counter() - eval_started
                if placement.is_main:
                    trainer.trackers.scalars(trainer.step, scalars)
                trainer._track_best(scalars, extra)  # the last evaluation competes for best.pt too
            finally:
                trainer.trackers.close()
            record = self._record(bench, method_cls, segmenter, network, result, score, eval_settings,
                                  trainer, placement, eval_seconds, micro, accum, amp_dtype, channels_last)
            record["eval"]["val_fingerprint"] = val_fingerprint(val_ids)
            record["data"] = {"root": str(data_root), **{
                f"{name}_manifest": str(getattr(ds, "manifest_path", None) or "") or None
                for name, ds in (("source", source_ds), ("target", sets.target_train),
                                 ("val", sets.target_val))}}
            if trainer.step != plan.train.iters:  # never file a run that did not train its schedule
                raise UserError(f"run {self.run_dir.path} trained {trainer.step} of {plan.train.iters} "
                                "iterations; it was not recorded as a result")
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
            "name": plan.name,
            "tags": list(plan.tags),
            "iters": trainer.step,
            "planned_iters": plan.train.iters,
            "init_from": plan.init_from,
            "subsets": list(bench.subsets),
            "headline": bench.subsets[0],
            "convention": score.convention,
            "miou": {k: v * 100 for k, v in score.miou.items()},
            "iou": {k: v * 100 for k, v in score.iou.items()},
            "iou_convention": {k: v * 100 for k, v in score.iou_convention.items()},
            "pixel_accuracy": score.pixel_accuracy * 100,
            "eval": {**eval_settings.describe(), "network": network, "checkpoint": "last",
                     "images": len(result.ids), "label_size": list(_label_size(result))},
            "checkpoints": {"best": dict(trainer.best) if trainer.best else None,
                            "kept": [p.name for p in self.run_dir.periodic_checkpoints()]},
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


def source_class_counts(dataset: Any, scratch: Path) -> torch.Tensor:
    """[images, classes] labelled pixel counts of the source at full resolution: from the
    dataset's manifest (``udabench data prepare``), else counted once and cached in the run."""
    import numpy as np

    from udabench.errors import DataError as _DataError

    try:
        return dataset.class_counts()
    except _DataError:
        pass
    cache = Path(scratch) / "source_class_counts.npy"
    if cache.is_file():
        counts = np.load(cache)
        if counts.shape[0] == len(dataset):
            return torch.from_numpy(counts)
    out = np.zeros((len(dataset), 19), dtype=np.int64)
    for i in range(len(dataset)):
        label = dataset.load(i)["label"].reshape(-1).long()
        out[i] = torch.bincount(label[label != 255], minlength=19)[:19].numpy()
    np.save(cache, out)
    return torch.from_numpy(out)


def eval_panels(net: torch.nn.Module, val: Any, settings: EvalSettings, device: torch.device,
                amp_dtype: torch.dtype | None, count: int = 2) -> dict[str, Any]:
    """image | prediction | ground truth panels (HWC uint8, at the label size) of the first
    validation images, for the experiment trackers."""
    import numpy as np
    import torch.nn.functional as F

    from udabench.engine.evaluator import predict
    from udabench.taxonomy import PALETTE

    was_training = net.training
    net.eval()
    panels = {}
    try:
        for i in range(min(count, len(val))):
            sample = val[i]
            label = sample["label"]
            pred = predict(net, sample["image"][None].to(device), tuple(label.shape[-2:]), settings,
                           amp_dtype)[0].cpu()
            image = F.interpolate(sample["image"][None].float(), size=tuple(label.shape[-2:]),
                                  mode="bilinear", align_corners=False)[0].round().clamp(0, 255)
            rows = [image.permute(1, 2, 0).to(torch.uint8).numpy(), PALETTE[pred.numpy()],
                    PALETTE[label.numpy()]]
            panels[f"eval/panel/{sample['id']}"] = np.concatenate(rows, axis=1)
    finally:
        net.train(was_training)
    return panels


@contextlib.contextmanager
def hold_stop_signals():
    """SIGTERM/SIGUSR1/SIGINT are recorded, not acted on, inside the block (the final evaluation
    and writing the result); the usual handlers come back after it. A held signal arrived after
    the training it would have stopped: the finished run is not thrown away for it."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    held: list[int] = []
    signals = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in signals}
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _label_size(result: Any) -> tuple[int, ...]:
    """The label resolution logits were upsampled to, as the evaluator saw it (H, W), or ()."""
    size = getattr(result, "label_size", None)
    return tuple(size) if size else ()


def check_validation_set(bench: Any, val: Any) -> list[str]:
    """The validation image ids; an evaluation must cover exactly the protocol's validation set
    (all 500 Cityscapes val images), or the run stops before training."""
    ids = [str(i) for i in getattr(val, "ids", None) or [val[k]["id"] for k in range(len(val))]]
    want = bench.expected_val_images
    if want and len(ids) != want:
        raise DataError(f"benchmark {bench.name} is scored on {want} validation images but "
                        f"{len(ids)} were found (missing labels, a partial download or a stale "
                        "manifest?); run `udabench data verify` on the target dataset")
    return ids


def val_fingerprint(ids: list[str]) -> str:
    """Which validation images were scored: a short hash of their sorted ids and their count."""
    blob = "\n".join(sorted(ids)).encode()
    return f"{len(ids)}-{hashlib.sha256(blob).hexdigest()[:12]}"


def new_run(plan: RunPlan) -> RunDir:
    """A new run directory in the one canonical layout ``<output_dir>/<benchmark>/<method>/<run-id>``."""
    base = Path(plan.output_dir) / plan.benchmark / plan.method
    run_id = new_run_id(plan.seed, plan.config_hash())
    path, n = base / run_id, 1
    while path.exists():  # the same config and seed started again within the same second
        n += 1
        path = base / f"{run_id}-{n}"
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
