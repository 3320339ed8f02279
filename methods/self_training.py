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

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from udabench.engine.checkpoint import load_checkpoint
from udabench.errors import ConfigError, DataError, UserError
from udabench.method import Method, OptimConfig, StepOutput
from udabench.registry import register_method
from udabench.taxonomy import IGNORE

from .adversarial import upsampled_probs
from .source_only import supervised_loss


# -- pseudo-label rules (pure functions, tested on hand-computed maps) ---------------------------
class ConfidenceCollector:
    """Per-class lists of the max-softmax of pixels predicted as that class (CBST step 1)."""

    def __init__(self, num_classes: int, stride: int = 1):
        self.num_classes, self.stride = num_classes, stride
        self.values: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]

    def add(self, probs: torch.Tensor) -> None:
        conf, pred = probs.float().max(1)
        conf = conf.flatten()[:: self.stride].cpu()
        pred = pred.flatten()[:: self.stride].cpu()
        for c in pred.unique().tolist():
            self.values[c].append(conf[pred == c])

    def thresholds(self, portion: float) -> torch.Tensor:
        """lambda_c = value at rank floor(portion * N_c) of class c's confidences, descending."""
        out = torch.ones(self.num_classes)
        for c, chunks in enumerate(self.values):
            if not chunks:
                continue
            v = torch.cat(chunks)
            n = v.numel()
            rank = min(int(math.floor(portion * n)), n - 1)  # 0-based, in descending order
            out[c] = torch.kthvalue(v, n - rank).values  # (rank+1)-th largest = (n-rank)-th smallest
        return out


def pseudo_labels(probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """argmax of probs / lambda_c where that maximum is >= 1, else 255; uint8 [B, H, W]."""
    scaled = probs.float() / thresholds.to(probs.device).view(1, -1, 1, 1)
    best, label = scaled.max(1)
    label[best < 1.0] = IGNORE
    return label.to(torch.uint8)


def window_labels(full: torch.Tensor, full_size: tuple[int, int], crop: tuple[int, int, int, int],
                  flip: bool) -> torch.Tensor:
    """Cut a training window from a label map stored at another size: nearest resize to
    ``full_size`` (pixel-centre aligned, as the data layer's resize_label), crop (255 outside the
    image, like the data layer's padding) and flip, without resizing the whole map."""
    h, w = full.shape[-2:]
    (hf, wf), (top, left, ch, cw) = full_size, crop
    dev = full.device
    r = torch.arange(top, top + ch, device=dev, dtype=torch.float64)
    c = torch.arange(left, left + cw, device=dev, dtype=torch.float64)
    rows = ((r + 0.5) * (h / hf)).long().clamp_(max=h - 1)
    cols = ((c + 0.5) * (w / wf)).long().clamp_(max=w - 1)
    out = full.index_select(-2, rows).index_select(-1, cols)
    out[..., (r >= hf), :] = IGNORE
    out[..., :, (c >= wf)] = IGNORE
    return out.flip(-1) if flip else out


def ce_ignore_safe(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean CE over labelled pixels; 0 (not NaN) when a batch has no pseudo-labelled pixel."""
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    label = label.long()
    total = F.cross_entropy(logits.float(), label, ignore_index=IGNORE, reduction="sum")
    return total / (label != IGNORE).sum().clamp_min(1)


def _target_ce(seg_out: dict, label: torch.Tensor, aux_weight: float) -> torch.Tensor:
    loss = ce_ignore_safe(seg_out["out"], label)
    if seg_out.get("aux") is not None and aux_weight > 0:
        loss = loss + aux_weight * ce_ignore_safe(seg_out["aux"], label)
    return loss


def _positive(cfg: object, where: str, names: tuple[str, ...], zero_ok: bool = False) -> None:
    for name in names:
        v = getattr(cfg, name)
        if v is not None and not (v >= 0 if zero_ok else v > 0):
            raise ConfigError(f"{where}.{name}: expected a number {'>=' if zero_ok else '>'} 0, got {v!r}")


def _unit(cfg: object, where: str, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(cfg, name)
        if not 0 <= v <= 1:
            raise ConfigError(f"{where}.{name}: expected a number in [0, 1], got {v!r}")


# -- round-based (CBST) -------------------------------------------------------------------------
@dataclass
class SelfTrainingConfig(OptimConfig):
    lr: float = 5e-5  # CBST retraining: constant lr 5e-5 (head 10x)
    poly_power: float = 0.0
    threshold: Literal["class_balanced", "global"] = "class_balanced"
    global_threshold: float = 0.9  # threshold = "global"
    portion_start: float = 0.20
    portion_step: float = 0.05
    portion_max: float = 0.50
    source_share_start: float = 0.03
    source_share_step: float = 0.0025
    source_share_max: float = 0.06
    rounds: int = 3
    round_iters: int = 0  # 0 = the iterations after warm-up split evenly into `rounds`
    warmup_iters: int | None = None  # source-only first; None = 0 with init_checkpoint, else half
    init_checkpoint: str = ""  # a udabench checkpoint (e.g. a source-only run's last.pt) or ""
    pixel_stride: int = 4  # confidence subsampling for the class thresholds
    label_batch_size: int = 2
    label_workers: int = 2  # loader processes for the labelling passes (order is kept)
    aux_weight: float = 0.1

    def __post_init__(self) -> None:
        where = "methods.self-training"
        _unit(self, where, ("global_threshold", "portion_start", "portion_step", "portion_max",
                            "source_share_start", "source_share_step", "source_share_max"))
        _positive(self, where, ("rounds", "pixel_stride", "label_batch_size"))
        _positive(self, where, ("round_iters", "warmup_iters", "label_workers", "aux_weight"),
                  zero_ok=True)


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
            self._load_init(Path(cfg.init_checkpoint).expanduser())
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

    def _load_init(self, path: Path) -> None:
        state = load_checkpoint(path / "checkpoints" / "last.pt" if path.is_dir() else path)
        state = state.get("method", state)
        weights = {k[len("segmenter."):]: v for k, v in state.items() if k.startswith("segmenter.")}
        try:
            self.segmenter.load_state_dict(weights or state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"methods.self-training.init_checkpoint: '{path}' does not fit this "
                            f"model ({first[:160]})") from None

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

    def _loader(self) -> DataLoader:
        from udabench.data.loaders import collate

        return DataLoader(self.ctx.target_images, batch_size=self.cfg.label_batch_size,
                          shuffle=False, num_workers=self.cfg.label_workers, collate_fn=collate)

    def _label_shape(self) -> list[int]:
        """(images, H, W) of the stored labels: the label-free view's (training) resolution."""
        h, w = self.ctx.target_images[0]["image"].shape[-2:]
        return [len(self.ctx.target_images), int(h), int(w)]

    def _probs(self, batch: dict) -> torch.Tensor:
        image = batch["image"].to(self.ctx.device)
        out = self.segmenter(image.float().div(255.0))
        return upsampled_probs(out["out"], tuple(image.shape[-2:]))

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
        store = self.labels()
        image = target["image"]
        b, (hh, ww) = image.shape[0], image.shape[-2:]
        geo = target.get("geometry")
        out = []
        for i, idx in enumerate(torch.as_tensor(target["index"]).tolist()):
            full = torch.from_numpy(np.array(store[idx]))
            if geo is None:  # no training transform: the stored size is the batch size
                size, crop, flip = full.shape, (0, 0, hh, ww), False
            else:
                size = tuple(geo["full_size"][i].tolist())
                crop, flip = tuple(geo["crop"][i].tolist()), bool(geo["flip"][i])
            out.append(window_labels(full, size, crop, flip))
        return torch.stack(out).to(image.device) if b else image.new_zeros((0, hh, ww))

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        c = self.cfg
        loss_s, logs = supervised_loss(self, source, c.aux_weight)
        if self.round < 0:  # warm-up: source only, target never forwarded in train mode
            return StepOutput({"model": loss_s}, logs)
        labels = self.batch_labels(target)
        out_t = self.segmenter(target["image"].float().div(255.0))
        loss_t = _target_ce(out_t, labels, c.aux_weight)
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
    ema_momentum: float = 0.99
    threshold: float = 0.968  # as in DACS
    weighting: Literal["fraction", "mask"] = "fraction"
    target_weight: float = 1.0
    warmup_iters: int = 0  # source-only iterations before the target loss starts
    aux_weight: float = 0.1
    eval_network: Literal["student", "teacher"] = "student"

    def __post_init__(self) -> None:
        where = "methods.self-training-online"
        _unit(self, where, ("ema_momentum", "threshold"))
        _positive(self, where, ("target_weight", "warmup_iters", "aux_weight"), zero_ok=True)


@register_method("self-training-online", description="online self-training with an EMA teacher")
class OnlineSelfTraining(Method):
    """Plain online self-training (proposal; EMA teacher and 0.968 threshold as in DACS)."""

    Config = OnlineSelfTrainingConfig

    def __init__(self, segmenter: nn.Module, cfg: OnlineSelfTrainingConfig, ctx):
        super().__init__(segmenter, cfg, ctx)
        self.teacher = copy.deepcopy(segmenter)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def teacher_labels(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels uint8 [B,H,W], weight): confident argmax of the teacher on the batch."""
        self.teacher.eval()
        probs = upsampled_probs(self.teacher(image.float().div(255.0))["out"],
                                tuple(image.shape[-2:]))
        conf, label = probs.max(1)
        confident = conf >= self.cfg.threshold
        if self.cfg.weighting == "mask":
            label[~confident] = IGNORE
            return label.to(torch.uint8), conf.new_ones(())
        return label.to(torch.uint8), confident.float().mean()

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        c = self.cfg
        loss, logs = supervised_loss(self, source, c.aux_weight)
        if step >= c.warmup_iters:
            labels, weight = self.teacher_labels(target["image"])
            out_t = self.segmenter(target["image"].float().div(255.0))
            loss_t = weight * _target_ce(out_t, labels, c.aux_weight)
            loss = loss + c.target_weight * loss_t
            logs.update(ce_target=float(loss_t.detach()), confident=float(weight))
        return StepOutput({"model": loss}, logs)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        alpha = min(1.0 - 1.0 / (step + 1), self.cfg.ema_momentum)
        for t, s in zip(self.teacher.parameters(), self.segmenter.parameters()):
            t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
        # BN statistics follow the student too (running stats by EMA, counters copied).
        for tm, sm in zip(self.teacher.modules(), self.segmenter.modules()):
            if isinstance(tm, nn.modules.batchnorm._BatchNorm) and tm.running_mean is not None:
                tm.running_mean.mul_(alpha).add_(sm.running_mean, alpha=1.0 - alpha)
                tm.running_var.mul_(alpha).add_(sm.running_var, alpha=1.0 - alpha)
                tm.num_batches_tracked.copy_(sm.num_batches_tracked)

    def eval_network(self) -> tuple[str, nn.Module]:
        if self.cfg.eval_network == "teacher":
            return "teacher", self.teacher
        return "student", self.segmenter
