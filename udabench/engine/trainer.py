"""The iteration-based training loop shared by every method.

Per optimiser step: ``before_step``; for each micro-batch (gradient accumulation) the method's
``training_step`` under autocast, each loss backpropagated into its own optimiser's parameters
only; gradients averaged across ranks; unscale, clip, step, poly LR; ``after_step``. Non-finite
losses stop the run with a diagnostic before anything is saved, so the last checkpoint stays good.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from udabench.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from udabench.engine.loggers import Trackers
from udabench.engine.progress import TrainProgress
from udabench.methodkit.schedules import lr_factor, poly_factor  # noqa: F401  (poly_factor: tests)
from udabench.engine.rundir import RunDir, write_json
from udabench.errors import UserError
from udabench.method import Method, OptimizerSpec


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(UserError):
    """Ctrl-C: a checkpoint was written and the run can be resumed."""

    exit_code = 130


class Preempted(Interrupted):
    """SIGTERM or SIGUSR1 (a scheduler's time limit or preemption): checkpoint written, resumable."""

    exit_code = 143


_STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "stopped by SIGTERM",
                 signal.SIGUSR1: "stopped by SIGUSR1"}


@dataclass
class LoopSettings:
    iters: int
    decay_iters: int
    grad_accum: int
    log_every: int
    checkpoint_every: int
    eval_every: int
    clip_grad: float
    amp_dtype: torch.dtype | None  # None = full precision
    use_scaler: bool  # fp16 needs loss scaling, bf16 does not
    keep_checkpoints: int = 0  # also keep the K newest iter_N.pt
    best_checkpoint: bool = False  # keep best.pt by the validation headline (model selection!)


def build_optimizer(spec: OptimizerSpec) -> torch.optim.Optimizer:
    groups = []
    for group in spec.param_groups:
        g = {k: v for k, v in group.items() if k not in ("lr_mult", "name")}
        g["lr"] = spec.lr * group.get("lr_mult", 1.0)
        g["initial_lr"] = g["lr"]
        g["name"] = group.get("name", "params")
        groups.append(g)
    if spec.kind == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.kind == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if spec.kind == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    raise UserError(f"unknown optimiser kind '{spec.kind}'; known: sgd, adam, adamw")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    def __init__(
        self,
        method: Method,
        source: Any,  # infinite loaders with state_dict/load_state_dict
        target: Any | None,  # None when the method does not use target images
        settings: LoopSettings,
        run_dir: RunDir,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        evaluate: Callable[[int], dict[str, float]] | None = None,
        progress: bool = True,
    ):
        self.method, self.source, self.target = method, source, target
        self.s, self.run_dir, self.device = settings, run_dir, device
        self.rank, self.world_size = rank, world_size
        self.evaluate = evaluate
        self.progress = progress and rank == 0
        self.specs = method.optimizers()
        self.optimizers = {name: build_optimizer(spec) for name, spec in self.specs.items()}
        self.params = {
            name: [p for g in opt.param_groups for p in g["params"]] for name, opt in self.optimizers.items()
        }
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.use_scaler)
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self._source_iter: Iterator | None = None
        self._target_iter: Iterator | None = None
        self._stop_requested = False
        self._stop_reason = "interrupted"
        self.trackers = Trackers([])
        self.best: dict[str, Any] = {}  # {"step", "key", "value"} of best.pt, when kept

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "method": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "loaders": {
                "source": self.source.state_dict(),
                "target": self.target.state_dict() if self.target else None,
            },
            "rng": rng_state(),
            "best": dict(self.best),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.scaler.load_state_dict(state["scaler"])
        self.source.load_state_dict(state["loaders"]["source"])
        if self.target:
            self.target.load_state_dict(state["loaders"]["target"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.train_seconds = float(state["train_seconds"])
        self.best = dict(state.get("best") or {})

    def save(self, extra: dict[str, Any], also: tuple[Path, ...] = ()) -> None:
        """last.pt (and copies under ``also``: iter_N.pt, best.pt), atomically."""
        if self.rank == 0:
            state = {**self.state_dict(), **extra}
            for path in (self.run_dir.checkpoint, *also):
                try:
                    save_checkpoint(path, state)
                except OSError as exc:  # a full disk: the write was atomic, the old file is intact
                    raise UserError(
                        f"cannot write checkpoint {path} at iteration {self.step} "
                        f"({exc.strerror or exc}); the previous checkpoint is unchanged; free space, "
                        f"then continue with: udabench run --resume {self.run_dir.path}"
                    ) from None

    def _periodic(self) -> tuple[Path, ...]:
        """iter_N.pt for this checkpoint when keeping K of them; older ones beyond K deleted."""
        if not self.s.keep_checkpoints or self.rank != 0:
            return ()
        path = self.run_dir.checkpoint_at(self.step)
        older = [p for p in self.run_dir.periodic_checkpoints() if p != path]
        for stale in older[: max(0, len(older) - self.s.keep_checkpoints + 1)]:
            stale.unlink(missing_ok=True)
        return (path,)

    def _track_best(self, scores: dict[str, float], extra: dict[str, Any]) -> None:
        """best.pt by the validation headline: model selection on the target labels (recorded)."""
        if not self.s.best_checkpoint or not scores:
            return
        key = next(k for k in scores if k.startswith("eval/mIoU"))
        value = scores[key]
        if value == value and (not self.best or value > self.best["value"]):
            self.best = {"step": self.step, "key": key, "value": value}
            self.save(extra, (self.run_dir.best_checkpoint,))

    def resume(self) -> dict[str, Any]:
        state = load_checkpoint(self.run_dir.checkpoint, map_location=self.device)
        self.load_state_dict(state)
        return state

    # -- one optimiser step --------------------------------------------------------------------
    def _set_lr(self) -> float:
        lr_main = 0.0
        for name, opt in self.optimizers.items():
            spec = self.specs[name]
            f = lr_factor(self.step, self.s.decay_iters, spec.poly_power, spec.warmup_iters,
                          spec.warmup_ratio)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * f
            if name == "model" or not lr_main:
                lr_main = opt.param_groups[0]["lr"]
        return lr_main

    def _divergence_cause(self, logs: dict[str, float]) -> str:
        """What is known about why a loss is not finite, in words (for the error line)."""
        terms = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
        if terms:
            return f"non-finite term(s) {', '.join(sorted(terms))}"
        bad = [n for n, p in self.method.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            return f"weights already non-finite after the previous update (e.g. {bad[0]})"
        return "cause unknown (inputs and weights are finite: too high a learning rate is usual)"

    def _check_finite(self, losses: dict[str, torch.Tensor], lr: float,
                      logs: dict[str, float] | None = None) -> None:
        for name, loss in losses.items():
            if not torch.isfinite(loss.detach()).all():
                cause = self._divergence_cause(logs or {})
                has_checkpoint = self.run_dir.checkpoint.exists()
                diagnostic = {
                    "step": self.step, "loss": name, "value": float(loss.detach().float().mean()),
                    "lr": lr, "cause": cause,
                    "last_checkpoint": str(self.run_dir.checkpoint) if has_checkpoint else None,
                }
                if self.rank == 0 and has_checkpoint:
                    write_json(self.run_dir.path / "divergence.json", diagnostic)
                if has_checkpoint:
                    then = (f"the checkpoint of the last good iteration is kept: lower the learning "
                            f"rate or set train.amp=off and continue with: udabench run --resume "
                            f"{self.run_dir.path}")
                else:  # the run directory is removed with the failed start: never point at it
                    then = ("no checkpoint was written yet, so there is nothing to resume: start "
                            "again with a lower learning rate or train.amp=off")
                raise TrainingDiverged(
                    f"loss '{name}' became {diagnostic['value']} at iteration {self.step} "
                    f"(lr {lr:.3g}; {cause}); {then}"
                )

    def _reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        # Explicit all-reduce after accumulation (rather than DDP module wrappers) works for any
        # number of optimisers and for losses that touch several networks.
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat)
        flat.div_(self.world_size)
        for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    def train_step(self) -> dict[str, float]:
        lr = self._set_lr()
        self.method.before_step(self.step)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        autocast = (
            torch.autocast(self.device.type, dtype=self.s.amp_dtype)
            if self.s.amp_dtype is not None else contextlib.nullcontext()
        )
        for _ in range(self.s.grad_accum):
            source = _to_device(next(self._source_iter), self.device)
            target = _to_device(next(self._target_iter), self.device) if self.target else {}
            seen = source["image"].shape[0] + (target["image"].shape[0] if target else 0)
            self.images_seen += seen * self.world_size
            with autocast:
                out = self.method.training_step(source, target, self.step)
            self._check_finite(out.losses, lr, out.logs)
            names = list(out.losses)
            for i, name in enumerate(names):
                loss = out.losses[name].float() / self.s.grad_accum
                torch.autograd.backward(
                    self.scaler.scale(loss), inputs=self.params[name], retain_graph=i < len(names) - 1
                )
                logs[f"loss/{name}"] = logs.get(f"loss/{name}", 0.0) + float(loss.detach())
            for k, v in out.logs.items():
                logs[k] = logs.get(k, 0.0) + float(v) / self.s.grad_accum
        for name, opt in self.optimizers.items():
            if self.world_size > 1:
                self._reduce_grads(self.params[name])
            self.scaler.unscale_(opt)
            if self.s.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(self.params[name], self.s.clip_grad)
            self.scaler.step(opt)
        self.scaler.update()
        if self.world_size > 1:
            # Like DDP's broadcast_buffers: rank 0's BatchNorm statistics (and other buffers)
            # win, so every rank holds the same model.
            for buf in self.method.buffers():
                torch.distributed.broadcast(buf, src=0)
        self.method.after_step(self.step)
        self.step += 1
        logs["lr"] = lr
        return logs

    # -- the loop ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self._stop_requested and signum == signal.SIGINT:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True
        self._stop_reason = _STOP_SIGNALS.get(signum, "stopped")
        self._stop_signal = signum

    def _should_stop(self) -> bool:
        """A stop request on any rank stops every rank at the same step (no rank left waiting)."""
        if self.world_size > 1:
            flag = torch.tensor([1.0 if self._stop_requested else 0.0], device=self.device)
            torch.distributed.all_reduce(flag)
            if flag.item() > 0 and not self._stop_requested:
                self._stop_requested, self._stop_reason = True, "stopped (another rank was signalled)"
                self._stop_signal = signal.SIGTERM
        return self._stop_requested

    def _stop(self, extra: dict[str, Any]) -> None:
        self.save(extra)
        error = Interrupted if getattr(self, "_stop_signal", signal.SIGINT) == signal.SIGINT else Preempted
        raise error(f"{self._stop_reason} at iteration {self.step}; checkpoint written to "
                    f"{self.run_dir.checkpoint}; continue with: udabench run --resume {self.run_dir.path}")

    def _log(self, step: int, record: dict[str, Any]) -> None:
        if self.rank == 0:
            self.run_dir.append_metrics({"step": step, **record})
            self.trackers.scalars(step, record)

    def fit(self, checkpoint_extra: dict[str, Any]) -> None:
        self._source_iter = iter(self.source)
        self._target_iter = iter(self.target) if self.target else None
        # Signal handlers can only be set from the main thread (an embedding thread keeps its own).
        main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS} if main else {}
        try:
            with TrainProgress(self.s.iters, self.step, self.progress) as bar:
                window_start, window_steps = time.perf_counter(), 0
                while self.step < self.s.iters:
                    t0 = time.perf_counter()
                    logs = self.train_step()
                    self.train_seconds += time.perf_counter() - t0
                    window_steps += 1
                    bar.advance(self.step)
                    if self.step % self.s.log_every == 0 or self.step == self.s.iters:
                        speed = window_steps / max(1e-9, time.perf_counter() - window_start)
                        window_start, window_steps = time.perf_counter(), 0
                        bar.report(self.step, logs, speed)
                        self._log(self.step, {"it_s": speed, **logs})
                    if self.evaluate and self.s.eval_every and self.step % self.s.eval_every == 0 \
                            and self.step < self.s.iters:
                        scores = self.evaluate(self.step)
                        self._log(self.step, scores)
                        self._track_best(scores, checkpoint_extra)
                    if self.step % self.s.checkpoint_every == 0 or self.step == self.s.iters:
                        self.save(checkpoint_extra, self._periodic())
                    if self._should_stop():
                        self._stop(checkpoint_extra)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def throughput(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else math.nan
