"""self-training: CBST-style class-balanced self-training in rounds (or a plain global threshold).

Zou et al., "Unsupervised Domain Adaptation for Semantic Segmentation via Class-Balanced
Self-Training", ECCV 2018 (CBST); the recipe below is the authors' PyTorch port (github.com/yzou2/
CRST, ``crst_seg.py`` with ``cbst.sh``), whose README reports 46.47 mIoU19 GTA5->Cityscapes.

Protocol: CBST starts from a trained source model. By default (``train.init_from = ""``) udabench
starts it from the finished ``source-only`` run of the same benchmark, seed, network and training
settings, and makes that run first when there is none (``train.init_from = "none"``: a source-only
warm-up of ``warmup_iters`` iterations instead, half the run by default).

Each round k = 0, 1, 2 (``rounds``):
1. Label every target train image with the current model in eval mode, at ``label_scale`` (0.9)
   x full resolution, averaging the prediction of the flipped image (``label_flip``).
2. For each class c, collect the max-softmax of the pixels predicted c (per image, every
   ``pixel_stride``-th (4) of that class's pixels); lambda_c = the value at 0-based index
   floor(p N_c) - 1 of those sorted descending, 1 when floor(p N_c) = 0 (``threshold_rank =
   "official"``; ``"floor"`` = index floor(p N_c), udabench 0.1).
3. Pseudo-label = argmax of probs / lambda_c where that maximum is >= 1, else 255. p = 0.20 +
   0.05 k (at most 0.50).
4. Retrain ``epochs_per_round`` (2) epochs over the round's list: every target train image with
   its pseudo-labels, plus floor(s_k x N_source) SOURCE IMAGES with their labels, s_k = 3% +
   0.25% k (at most 6%), shuffled together; batch 2, one CE over the batch's labelled pixels.
   (``source_mixing = "loss_weight"`` = udabench 0.1's different algorithm: every step
   s_k CE(source) + (1 - s_k) CE(target).)
SGD lr 5e-5 constant (head 10x), momentum 0.9, weight decay 5e-4; BatchNorm in eval mode while
retraining (``cbst.sh`` does not pass ``--is-training``), hence ``model.bn_mode = "frozen"``.
On the real benchmarks the schedule is the recipe's: 3 rounds x 2 epochs over (2,975 +
floor(s_k N_source)) images at batch 2.

Departures (each documented in docs/methods.md):
- Source images: CRST draws a fixed subset of floor(s_k N_source) images per round
  (``np.random.choice``, seed 3 + round) and shuffles it into the list; udabench keeps exactly that
  share of source slots in every epoch of the round list, filled from the run's shuffled source
  stream (a round sees up to twice as many distinct source images, each once).
- Training crops: CRST trains on 512x1024 crops at random scale 0.5-1.5 with mirroring;
  udabench uses the benchmark's training pipeline (the protocol of every method).
- One optimiser for the run (CRST makes a new SGD per round: momentum restarts).
- Rare-class patch mining (``mine_port``, ``mine_chance``) is not implemented.
- Target list: CRST self-trains on a 500-image subset of Cityscapes train
  (``train_ClsConfSet.lst``); udabench uses the whole split.
- Pseudo-labels are stored at the training resolution (CRST writes them at full resolution and
  resizes them with the image).
Pseudo-labels live in a file-backed uint8 array per round under the run's scratch directory
(never in the checkpoint, never recomputed on resume: round, portion and thresholds are state).
``threshold = "global"`` is plain self-training (a udabench proposal): lambda_c = 0.9.
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
                             StepOutput, UserError, batch_window_labels, hash_seed, mixed_ce,
                             multi_level_ce, ordered_loader, pseudo_labels, register_method,
                             setting, supervised_loss, upsampled_probs)


# -- round-based (CBST) -------------------------------------------------------------------------
# Nominal sizes of the real datasets, for the published schedule on the real protocols (the
# rounds follow the actual sizes at run time; these only size the total).
NOMINAL_IMAGES = {"gta5": 24_966, "synthia": 9_400, "cityscapes": 2_975}


def _unit(**kw):
    return setting(ge=0, le=1, **kw)


@dataclass
class SelfTrainingConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.self-training"

    lr: float = setting(5e-5, gt=0, unit="rate", doc="CBST retraining: constant lr 5e-5 (head 10x)")
    poly_power: float = setting(0.0, ge=0)
    threshold: Literal["class_balanced", "global"] = setting(
        "class_balanced", choices=("class_balanced", "global"))
    threshold_rank: Literal["official", "floor"] = setting(
        "official", choices=("official", "floor"),
        doc="official: index floor(pN)-1 (lambda=1 when floor(pN)=0); floor: index floor(pN)")
    global_threshold: float = _unit(default=0.9, doc="threshold = global")
    portion_start: float = _unit(default=0.20)
    portion_step: float = _unit(default=0.05)
    portion_max: float = _unit(default=0.50)
    source_mixing: Literal["images", "loss_weight"] = setting(
        "images", choices=("images", "loss_weight"),
        doc="images: source images mixed into each round's list (CBST); loss_weight: udabench 0.1")
    source_share_start: float = _unit(default=0.03, doc="share of the source set in round 0")
    source_share_step: float = _unit(default=0.0025)
    source_share_max: float = _unit(default=0.06)
    rounds: int = setting(3, ge=1)
    epochs_per_round: float = setting(2.0, gt=0, doc="epochs over each round's image list")
    round_iters: int = setting(0, ge=0, unit="iterations",
                               doc="0 = the run's iterations after warm-up, split "
                                   "in proportion to the rounds' list sizes")
    warmup_iters: int | None = setting(None, ge=0, unit="iterations",
                                       doc="source-only iterations first; None = 0 "
                                           "when started from a run, else half")
    label_scale: float = setting(0.9, ge=0, le=2, doc="labelling input = scale x full resolution; "
                                                       "0 = the training resolution")
    label_flip: bool = setting(True, free=True, doc="average with the flipped image's prediction")
    pixel_stride: int = setting(4, ge=1, doc="per image and class, every n-th pixel (ds_rate)")
    label_batch_size: int = setting(1, ge=1, doc="images per labelling forward pass")
    label_workers: int = setting(2, ge=0, doc="loader processes for the labelling passes")
    aux_weight: float = setting(0.1, ge=0)

    def check(self) -> None:
        if self.portion_start > self.portion_max:
            raise self.fail("portion_start", f"expected <= portion_max ({self.portion_max})")
        if self.source_share_start > self.source_share_max:
            raise self.fail("source_share_start", f"expected <= source_share_max ({self.source_share_max})")


@register_method("self-training", description="CBST-style class-balanced self-training (rounds)")
class SelfTraining(Method):
    """CBST (ECCV 2018; 46.47 mIoU19 in the CRST repository, R101 port), or global-threshold ST."""

    Config = SelfTrainingConfig
    warm_start = "source-only"

    @classmethod
    def model_defaults(cls, cfg: SelfTrainingConfig) -> dict:
        return {"bn_mode": "frozen"}  # cbst.sh retrains in eval mode

    @classmethod
    def published_schedule(cls, cfg: SelfTrainingConfig, bench) -> dict[str, int]:
        n_t = NOMINAL_IMAGES.get(bench.target_kind)
        n_src = NOMINAL_IMAGES.get(bench.source_kind)
        if n_t is None or n_src is None:
            return {"batch_size": 2}
        total = sum(math.ceil(cfg.epochs_per_round * (n_t + math.floor(share * n_src)) / 2)
                    for share in (cls._share(cfg, k) for k in range(cfg.rounds)))
        return {"iters": total, "decay_iters": total, "batch_size": 2}

    @staticmethod
    def _grown(start: float, step: float, top: float, k: int) -> float:
        """start, then + step per round, capped: added up round by round exactly as CRST does
        (0.03 + 0.0025 + 0.0025 is not 0.03 + 2 x 0.0025 in floating point, and floor() sees it)."""
        value = start
        for _ in range(k):
            value = min(value + step, top)
        return value

    @classmethod
    def _share(cls, cfg: SelfTrainingConfig, k: int) -> float:
        return cls._grown(cfg.source_share_start, cfg.source_share_step, cfg.source_share_max, k)

    def __init__(self, segmenter: nn.Module, cfg: SelfTrainingConfig, ctx):
        super().__init__(segmenter, cfg, ctx)
        if ctx.target_images is None:
            raise UserError("method 'self-training' needs the label-free target train images "
                            "(MethodContext.target_images), got none")
        warm = cfg.warmup_iters
        if warm is None:
            warm = 0 if ctx.init_from else ctx.total_iters // 2
        self.warmup = min(warm, ctx.total_iters)
        self.round_starts = self._round_starts()
        # State (checkpointed through get/set_extra_state); round -1 = source-only warm-up.
        self.round, self.portion, self.source_share = -1, 0.0, 1.0
        self.thresholds: list[float] = []
        self.label_shape: list[int] = []
        self._labels: np.ndarray | None = None
        self._slots: tuple[int, int, torch.Tensor] | None = None  # (round, epoch, slot kinds)

    # -- schedule ---------------------------------------------------------------------------------
    def list_size(self, k: int) -> tuple[int, int]:
        """(target images, source images) of round k's training list."""
        n_s = math.floor(self._share(self.cfg, k) * self.ctx.source_size)
        if self.cfg.source_mixing != "images":
            n_s = 0
        return self.ctx.target_train_size, n_s

    def _round_starts(self) -> list[int]:
        """First iteration of each round: ``round_iters`` each, or the iterations after warm-up
        split in proportion to the rounds' list sizes (the published epochs, on a real run)."""
        c, left = self.cfg, self.ctx.total_iters - self.warmup
        if c.round_iters:
            lengths = [c.round_iters] * c.rounds
        else:
            sizes = [sum(self.list_size(k)) for k in range(c.rounds)]
            cum = [sum(sizes[: k + 1]) for k in range(c.rounds)]
            ends = [round(left * x / cum[-1]) for x in cum]
            lengths = [e - b for b, e in zip([0] + ends[:-1], ends)]
        starts, at = [], self.warmup
        for n in lengths:
            starts.append(at)
            at += max(1, n)
        return starts

    def round_at(self, step: int) -> int:
        """Index of the round running at ``step`` (-1 during the source-only warm-up)."""
        return sum(1 for s in self.round_starts if step >= s) - 1

    def schedule(self, k: int) -> tuple[float, float]:
        c = self.cfg
        return self._grown(c.portion_start, c.portion_step, c.portion_max, k), self._share(c, k)

    def before_step(self, step: int) -> None:
        k = self.round_at(step)
        if k > self.round:  # a resumed checkpoint taken after the round start skips this
            self.start_round(k)

    def slot_is_source(self, step: int, batch: int) -> torch.Tensor:
        """Which of the batch's slots hold a source image at ``step`` (CBST's mixed list): the
        round's list of N_t target and N_s source entries, reshuffled every epoch from the run
        seed, read ``batch`` entries per step."""
        k = self.round_at(step)
        n_t, n_s = self.list_size(k)
        n = n_t + n_s
        first = (step - self.round_starts[k]) * batch
        out = []
        for pos in range(first, first + batch):
            epoch = pos // n
            if self._slots is None or self._slots[:2] != (k, epoch):
                gen = torch.Generator().manual_seed(hash_seed(self.ctx.seed, "cbst-list", k, epoch))
                kinds = torch.cat([torch.zeros(n_t, dtype=torch.bool), torch.ones(n_s, dtype=torch.bool)])
                self._slots = (k, epoch, kinds[torch.randperm(n, generator=gen)])
            out.append(bool(self._slots[2][pos % n]))
        return torch.tensor(out)

    # -- pseudo-labelling -------------------------------------------------------------------------
    def labels_path(self, k: int) -> Path:
        # One file per round: a checkpoint from the previous round must still find its labels.
        return Path(self.ctx.scratch_dir) / f"self_training_round{k}.npy"

    def _labelling_view(self):
        if self.cfg.label_scale and self.ctx.target_view is not None:
            return self.ctx.target_view(self.cfg.label_scale)
        return self.ctx.target_images

    def _loader(self):
        return ordered_loader(self._labelling_view(), self.cfg.label_batch_size, self.cfg.label_workers)

    def _label_shape(self) -> list[int]:
        """(images, H, W) of the stored labels: the label-free view's (training) resolution."""
        h, w = self.ctx.target_images[0]["image"].shape[-2:]
        return [len(self.ctx.target_images), int(h), int(w)]

    def _probs(self, batch: dict, size: tuple[int, int]) -> torch.Tensor:
        """Softmax at ``size`` (the stored label size), averaged with the flipped image's."""
        image = batch["image"].to(self.ctx.device)
        probs = upsampled_probs(self.segment(image)["out"], size)
        if self.cfg.label_flip:
            flipped = upsampled_probs(self.segment(image.flip(-1))["out"], size)
            probs = 0.5 * (probs + flipped.flip(-1))
        return probs
    @torch.no_grad()
    def compute_labels(self, portion: float, path: Path) -> list[float]:
        """Label every target train image into ``path`` (atomically); returns the thresholds."""
        seg, c = self.segmenter, self.cfg
        was_training = seg.training
        seg.eval()
        try:
            n, h, w = self._label_shape()
            # The temporary exists for the whole labelling (both passes): a kill anywhere in it
            # leaves only a .tmp, which the resumed run overwrites.
            tmp = path.with_name(path.name + ".tmp")
            path.parent.mkdir(parents=True, exist_ok=True)
            store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, h, w))
            if c.threshold == "global":
                thresholds = torch.full((self.ctx.num_classes,), float(c.global_threshold))
            else:
                collector = ConfidenceCollector(self.ctx.num_classes, c.pixel_stride)
                for batch in self._loader():
                    collector.add(self._probs(batch, (h, w)))
                thresholds = collector.thresholds(portion, c.threshold_rank)
            for batch in self._loader():  # second pass: same inputs, same network, same probs
                labels = pseudo_labels(self._probs(batch, (h, w)), thresholds).cpu().numpy()
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
        if self.round < 0:  # warm-up: source only, target never forwarded in train mode
            loss, logs, _ = supervised_loss(self, source, c.aux_weight)
            return StepOutput({"model": loss}, logs)
        labels = self.batch_labels(target)
        if c.source_mixing == "loss_weight":
            loss_s, logs, _ = supervised_loss(self, source, c.aux_weight)
            loss_t = multi_level_ce(self.segment(target["image"]), labels, c.aux_weight)
            loss = self.source_share * loss_s + (1.0 - self.source_share) * loss_t
        else:  # CBST: each slot of the batch holds a source or a target image of the round list
            is_source = self.slot_is_source(step, target["image"].shape[0])
            parts = [(source["image"][is_source], source["label"][is_source]),
                     (target["image"][~is_source], labels[~is_source])]
            loss, logs = mixed_ce(self, parts, c.aux_weight)
            logs["source_slots"] = float(is_source.float().mean())
            loss_t = loss
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
