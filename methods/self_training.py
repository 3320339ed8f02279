"""self-training (CBST-style class-balanced rounds, or a plain global threshold) and its online variant.

``self-training`` - Zou et al., "Unsupervised Domain Adaptation for Semantic Segmentation via
Class-Balanced Self-Training", ECCV 2018 (CBST); published 46.47 mIoU19 GTA5->Cityscapes with the
authors' DeepLabV2-R101 PyTorch port. Round based: at the start of each round the current model
(eval mode) labels every target train image (``ctx.target_images``, label-free, at the training
input resolution):

1. for each class c, the max-softmax of the pixels predicted c (every ``pixel_stride``-th pixel);
2. lambda_c = the value at rank floor(p * N_c) of those sorted descending (the top p of each
   class's own predictions); a class nobody predicts gets lambda_c = 1 (never pseudo-labelled);
3. pseudo-label = argmax of probs / lambda_c, kept where that divided maximum is >= 1, else 255.

p = 0.20 in the first round, +0.05 per round, at most 0.50. ``threshold = "global"`` is plain
self-training (a udabench proposal): lambda_c = 0.9 for every class, i.e. argmax where the
confidence is >= 0.9. Pseudo-labels live in a file-backed uint8 array per round under the run's
scratch directory (never in the checkpoint, never recomputed on resume: the round number, portion
and thresholds are in the method state). Training: L = s * CE(source) + (1 - s) * CE(target,
pseudo-labels cut through the target batch's own crop/scale/flip) where the source share s starts
at 3% and grows 0.25% per round up to 6%.

Departures from the published recipe (documented, each a setting where possible):
- The source share is a loss weight (CBST samples 3%..6% *of the source set* into each round's
  training set; on GTA5 that is a larger share of the images than s here: tune ``source_share_*``).
- One optimiser for the whole run (CBST creates a new SGD per round; momentum carries over here).
- Rounds are spread over the run: ``rounds`` rounds after ``warmup_iters`` source-only iterations
  (CBST starts from a fully trained source model: give one with ``init_checkpoint``).
- CBST's rare-class mining (``mine_port``) is not implemented.
Defaults follow CBST: SGD lr 5e-5 constant (head 10x), 3 rounds. On MiniCity (a tiny network
from scratch) the recipe ends far below source-only: the class-balanced thresholds pseudo-label
the classes the warm-up model confuses and each round amplifies them (README, "MiniCity outcome";
``bench/pseudo_label_quality.py`` measures it).

``self-training-online`` - plain online self-training (udabench proposal): an EMA teacher
(momentum 0.99, warmed up as min(1 - 1/(t+1), 0.99) as in DACS) labels the current target batch;
pixels with confidence >= 0.968 count. ``weighting = "fraction"`` weights the target CE over all
pixels by the share of confident pixels (DACS); ``"mask"`` ignores the unconfident ones. The
teacher is in the state dict; the student is evaluated unless ``eval_network = "teacher"``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from udabench.method import (IGNORE, ConfidenceCollector, DataError, Method, OptimConfig,
                             StepOutput, UserError, batch_window_labels, ema_alpha, ema_update,
                             load_segmenter_weights, make_teacher, multi_level_ce, ordered_loader,
                             pseudo_labels, register_method, setting, supervised_loss,
                             upsampled_probs)


# -- round-based (CBST) -------------------------------------------------------------------------
def _unit(**kw):
    return setting(ge=0, le=1, **kw)


@dataclass
class SelfTrainingConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.self-training"

    lr: float = setting(5e-5, gt=0, doc="CBST retraining: constant lr 5e-5 (head 10x)")
    poly_power: float = setting(0.0, ge=0)
    threshold: Literal["class_balanced", "global"] = setting(
        "class_balanced", choices=("class_balanced", "global"))
    global_threshold: float = _unit(default=0.9, doc="threshold = global")
    portion_start: float = _unit(default=0.20)
    portion_step: float = _unit(default=0.05)
    portion_max: float = _unit(default=0.50)
    source_share_start: float = _unit(default=0.03)
    source_share_step: float = _unit(default=0.0025)
    source_share_max: float = _unit(default=0.06)
    rounds: int = setting(3, ge=1)
    round_iters: int = setting(0, ge=0, doc="0 = the iterations after warm-up split into rounds")
    warmup_iters: int | None = setting(None, ge=0,
                                       doc="source-only first; None = 0 with init_checkpoint, else half")
    init_checkpoint: str = setting("", free=True, doc="a udabench checkpoint or ''")
    pixel_stride: int = setting(4, ge=1, doc="confidence subsampling for the class thresholds")
    label_batch_size: int = setting(2, ge=1)
    label_workers: int = setting(2, ge=0, doc="loader processes for the labelling passes")
    aux_weight: float = setting(0.1, ge=0)


@register_method("self-training", description="CBST-style class-balanced self-training (rounds)")
class SelfTraining(Method):
    """CBST (ECCV 2018; 46.47 mIoU19 published, R101 port), or plain global-threshold ST."""

    Config = SelfTrainingConfig

    def __init__(self, segmenter: nn.Module, cfg: SelfTrainingConfig, ctx):
        super().__init__(segmenter, cfg, ctx)
        if ctx.target_images is None:
            raise UserError("method 'self-training' needs the label-free target train images "
                            "(MethodContext.target_images), got none")
        if cfg.init_checkpoint:
            path = Path(cfg.init_checkpoint).expanduser()
            load_segmenter_weights(self.segmenter, path / "checkpoints" / "last.pt"
                                   if path.is_dir() else path, "methods.self-training.init_checkpoint")
        warm = cfg.warmup_iters
        if warm is None:
            warm = 0 if cfg.init_checkpoint else ctx.total_iters // 2
        self.warmup = warm
        self.round_iters = cfg.round_iters or max(1, math.ceil((ctx.total_iters - warm) / cfg.rounds))
        # State (checkpointed through get/set_extra_state); round -1 = source-only warm-up.
        self.round, self.portion, self.source_share = -1, 0.0, 1.0
        self.thresholds: list[float] = []
        self.label_shape: list[int] = []
        self._labels: np.ndarray | None = None

    # -- schedule ---------------------------------------------------------------------------------
    def round_at(self, step: int) -> int:
        """Index of the round running at ``step`` (-1 during the source-only warm-up)."""
        return -1 if step < self.warmup else (step - self.warmup) // self.round_iters

    def schedule(self, k: int) -> tuple[float, float]:
        c = self.cfg
        portion = min(c.portion_start + k * c.portion_step, c.portion_max)
        share = min(c.source_share_start + k * c.source_share_step, c.source_share_max)
        return portion, share

    def before_step(self, step: int) -> None:
        k = self.round_at(step)
        if k > self.round:  # a resumed checkpoint taken after the round start skips this
            self.start_round(k)

    # -- pseudo-labelling -------------------------------------------------------------------------
    def labels_path(self, k: int) -> Path:
        # One file per round: a checkpoint from the previous round must still find its labels.
        return Path(self.ctx.scratch_dir) / f"self_training_round{k}.npy"

    def _loader(self):
        return ordered_loader(self.ctx.target_images, self.cfg.label_batch_size, self.cfg.label_workers)

    def _label_shape(self) -> list[int]:
        """(images, H, W) of the stored labels: the label-free view's (training) resolution."""
        h, w = self.ctx.target_images[0]["image"].shape[-2:]
        return [len(self.ctx.target_images), int(h), int(w)]

    def _probs(self, batch: dict) -> torch.Tensor:
        image = batch["image"].to(self.ctx.device)
        return upsampled_probs(self.segment(image)["out"], tuple(image.shape[-2:]))

    @torch.no_grad()
    def compute_labels(self, portion: float, path: Path) -> list[float]:
        """Label every target train image into ``path`` (atomically); returns the thresholds."""
        seg, c = self.segmenter, self.cfg
        was_training = seg.training
        seg.eval()
        try:
            if c.threshold == "global":
                thresholds = torch.full((self.ctx.num_classes,), float(c.global_threshold))
            else:
                collector = ConfidenceCollector(self.ctx.num_classes, c.pixel_stride)
                for batch in self._loader():
                    collector.add(self._probs(batch))
                thresholds = collector.thresholds(portion)
            n, h, w = self._label_shape()
            tmp = path.with_name(path.name + ".tmp")
            path.parent.mkdir(parents=True, exist_ok=True)
            store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, h, w))
            for batch in self._loader():  # second pass: same inputs, same network, same probs
                labels = pseudo_labels(self._probs(batch), thresholds).cpu().numpy()
                for i, idx in enumerate(torch.as_tensor(batch["index"]).tolist()):
                    store[idx] = labels[i]
            store.flush()
            del store
            os.replace(tmp, path)
        finally:
            seg.train(was_training)
        return thresholds.tolist()

    def start_round(self, k: int) -> None:
        portion, share = self.schedule(k)
        path = self.labels_path(k)
        dist = self.ctx.world_size > 1 and torch.distributed.is_initialized()
        thresholds = torch.zeros(self.ctx.num_classes, dtype=torch.float64)
        if self.ctx.rank == 0:  # one writer; the other ranks read the same file
            thresholds = torch.tensor(self.compute_labels(portion, path), dtype=torch.float64)
        if dist:
            thresholds = thresholds.to(self.ctx.device)
            torch.distributed.broadcast(thresholds, 0)  # also a barrier: the file is complete
        self.label_shape = self._label_shape()
        self.round, self.portion, self.source_share = k, portion, share
        self.thresholds = thresholds.cpu().tolist()
        self._labels = None

    def labels(self) -> np.ndarray:
        if self._labels is None:
            path = self.labels_path(self.round)
            if not path.is_file():
                raise DataError(f"pseudo-label file {path} of round {self.round} is missing; "
                                f"the run's scratch directory was changed, start a new run")
            arr = np.load(path, mmap_mode="r")
            if list(arr.shape) != self.label_shape:
                raise DataError(f"pseudo-label file {path} has shape {list(arr.shape)}, the run "
                                f"state expects {self.label_shape}; start a new run")
            self._labels = arr
        return self._labels

    def batch_labels(self, target: dict) -> torch.Tensor:
        """The pseudo-labels of a target batch, through its own geometry (by ``index``)."""
        return batch_window_labels(self.labels(), target)

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        c = self.cfg
        loss_s, logs, _ = supervised_loss(self, source, c.aux_weight)
        if self.round < 0:  # warm-up: source only, target never forwarded in train mode
            return StepOutput({"model": loss_s}, logs)
        labels = self.batch_labels(target)
        loss_t = multi_level_ce(self.segment(target["image"]), labels, c.aux_weight)
        loss = self.source_share * loss_s + (1.0 - self.source_share) * loss_t
        logs.update(ce_target=float(loss_t.detach()), round=float(self.round),
                    labelled=float((labels != IGNORE).float().mean()))
        return StepOutput({"model": loss}, logs)

    def get_extra_state(self) -> dict:
        return {"round": self.round, "portion": self.portion, "source_share": self.source_share,
                "thresholds": list(self.thresholds), "label_shape": list(self.label_shape)}

    def set_extra_state(self, state: dict) -> None:
        self.round, self.portion = int(state["round"]), float(state["portion"])
        self.source_share = float(state["source_share"])
        self.thresholds = [float(t) for t in state["thresholds"]]
        self.label_shape = [int(s) for s in state["label_shape"]]
        self._labels = None


# -- online (EMA teacher) -----------------------------------------------------------------------
@dataclass
class OnlineSelfTrainingConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.self-training-online"

    ema_momentum: float = _unit(default=0.99)
    threshold: float = _unit(default=0.968, doc="as in DACS")
    weighting: Literal["fraction", "mask"] = setting("fraction", choices=("fraction", "mask"))
    target_weight: float = setting(1.0, ge=0)
    warmup_iters: int = setting(0, ge=0, doc="source-only iterations before the target loss")
    aux_weight: float = setting(0.1, ge=0)
    eval_network: Literal["student", "teacher"] = setting("student", choices=("student", "teacher"))


@register_method("self-training-online", description="online self-training with an EMA teacher")
class OnlineSelfTraining(Method):
    """Plain online self-training (proposal; EMA teacher and 0.968 threshold as in DACS)."""

    Config = OnlineSelfTrainingConfig

    def __init__(self, segmenter: nn.Module, cfg: OnlineSelfTrainingConfig, ctx):
        super().__init__(segmenter, cfg, ctx)
        self.teacher = make_teacher(segmenter)

    @torch.no_grad()
    def teacher_labels(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels uint8 [B,H,W], weight): confident argmax of the teacher on the batch."""
        self.teacher.eval()
        probs = upsampled_probs(self.segment(image, self.teacher)["out"], tuple(image.shape[-2:]))
        conf, label = probs.max(1)
        confident = conf >= self.cfg.threshold
        if self.cfg.weighting == "mask":
            label[~confident] = IGNORE
            return label.to(torch.uint8), conf.new_ones(())
        return label.to(torch.uint8), confident.float().mean()

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        c = self.cfg
        loss, logs, _ = supervised_loss(self, source, c.aux_weight)
        if step >= c.warmup_iters:
            labels, weight = self.teacher_labels(target["image"])
            loss_t = weight * multi_level_ce(self.segment(target["image"]), labels, c.aux_weight)
            loss = loss + c.target_weight * loss_t
            logs.update(ce_target=float(loss_t.detach()), confident=float(weight))
        return StepOutput({"model": loss}, logs)

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, self.segmenter, ema_alpha(step, self.cfg.ema_momentum))

    def eval_network(self) -> tuple[str, nn.Module]:
        if self.cfg.eval_network == "teacher":
            return "teacher", self.teacher
        return "student", self.segmenter
