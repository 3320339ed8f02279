"""CLST: contrastive centroid alignment + self-training on a temporal ensemble (a RECONSTRUCTION).

Paper: Marsden, Bartler, Doebler, Yang, "Contrastive Learning and Self-Training for Unsupervised
Domain Adaptation in Semantic Segmentation", 2021 (published 51.6 mIoU19 GTA5->Cityscapes; SYNTHIA
49.8 mIoU16 / 57.8 mIoU13, DeepLabV2-R101). No public code and no full hyperparameter list exist:
this is a faithful reconstruction from the paper's description, every choice a setting below, the
defaults udabench proposals. Its results are NOT a reproduction of the published numbers.

Per step after ``warmup_iters`` source-only steps (none when the run starts from a finished
source-only run, ``train.init_from``):
  L = CE(source) [+ aux_weight CE_aux] + w_cl * L_cl + w_st * L_st
- L_cl: layer4 features (optionally an MLP projection), L2-normalised per pixel; labels brought to
  the feature grid by nearest (centre) sampling: source ground truth, target pseudo-labels. Class
  centroid per domain = normalised mean feature (optionally blended with a momentum memory). For each
  class c present in both domains: l_c = -log softmax_k(<m_c^t, m_k^s> / tau)[c] over the source
  classes k present; L_cl = mean_c l_c (``symmetric``: average with the source->target direction).
- L_st: CE of the target logits against pseudo-labels = arg-max of a per-image temporal ensemble
  (bias-corrected EMA of the softmax, file-backed, crop/flip-aware: udabench/ensemble.py) where its
  confidence passes the threshold (``global``, or ``class_balanced``: per-class top-``portion``
  confidence as in CBST, from a decayed histogram of ensemble confidences, capped at ``threshold``).
  Only pixels of images already visited get labels; by default the labels are read before the
  current prediction is folded in (``label_timing``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from udabench.method import (ENSEMBLE_MODES, IGNORE, Allowed, EnsembleLayout, Method,
                             MethodContext, OptimConfig, StepOutput, TemporalEnsemble, UserError,
                             register_method, setting, supervised_loss)

ENSEMBLE_FILE = "clst_ensemble.bin"


@dataclass
class CLSTConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.clst"

    aux_weight: float = setting(0.1, ge=0, doc="auxiliary head CE on source, when multi-level")
    warmup_iters: int = setting(-1, ge=-1, unit="iterations",
                                doc="source-only steps first; -1 = a quarter of the run "
                                    "(0 when started from a run: train.init_from)")
    tau: float = setting(0.1, gt=0, doc="temperature of the centroid contrastive softmax")
    w_cl: float = setting(0.1, ge=0, doc="weight of the contrastive centroid loss")
    w_st: float = setting(1.0, ge=0, doc="weight of the self-training loss")
    symmetric: bool = setting(False, free=True)
    projection: str = setting("none", choices=("none", "mlp"),
                              doc="mlp = 1x1 conv, ReLU, 1x1 conv on the features")
    projection_dim: int = setting(128, ge=1)
    centroid_momentum: float = setting(0.0, ge=0, lt=1, doc="0 = batch centroids; >0 = a memory")
    ensemble_momentum: float = setting(0.9, ge=0, lt=1)
    ensemble_mode: str = setting("probs_fp16", choices=ENSEMBLE_MODES)
    ensemble_input_size: tuple[int, ...] = setting(
        (), item=Allowed(ge=1), doc="(H, W) un-augmented target size; () = from the data")
    label_timing: str = setting("before_update", choices=("before_update", "after_update"),
                                doc="after_update includes this visit")
    threshold_mode: str = setting("global", choices=("global", "class_balanced"))
    threshold: float = setting(0.9, ge=0, le=1, doc="global threshold; cap of class-balanced ones")
    portion: float = setting(0.5, gt=0, le=1, doc="class_balanced: share of each class kept")
    cb_momentum: float = setting(0.99, ge=0, le=1, unit="per_iteration",
                                 doc="class_balanced: histogram decay per step")

    def check(self) -> None:
        if len(self.ensemble_input_size) not in (0, 2):
            raise self.fail("ensemble_input_size", "expected [H, W] or []")


# -- contrastive centroid loss ------------------------------------------------------------------
def to_grid(label: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Labels [B, H, W] -> [B, h, w] by nearest sampling at cell centres."""
    if tuple(label.shape[-2:]) == tuple(hw):
        return label.long()
    return F.interpolate(label[:, None].float(), size=hw, mode="nearest-exact")[:, 0].long()


def class_centroids(feat: torch.Tensor, label: torch.Tensor, num_classes: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """feat [B, D, h, w] (L2-normalised per pixel), label [B, h, w] -> (normalised mean feature
    per class [C, D], present [C])."""
    f = feat.permute(0, 2, 3, 1).reshape(-1, feat.shape[1])
    y = label.reshape(-1)
    keep = y != IGNORE
    f, y = f[keep], y[keep]
    sums = torch.zeros(num_classes, f.shape[1], device=f.device, dtype=f.dtype).index_add_(0, y, f)
    counts = torch.bincount(y, minlength=num_classes)
    return F.normalize(sums, dim=1), counts > 0


def centroid_contrastive_loss(m_t: torch.Tensor, present_t: torch.Tensor, m_s: torch.Tensor,
                              present_s: torch.Tensor, tau: float, symmetric: bool = False
                              ) -> torch.Tensor:
    """Mean over classes c present in both of -log softmax_k(<m_c^t, m_k^s>/tau)[c], k over the
    source classes present (symmetric: averaged with the same loss, domains swapped)."""
    def one_way(a: torch.Tensor, pa: torch.Tensor, b: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
        both = torch.nonzero(pa & pb).flatten()
        keys = torch.nonzero(pb).flatten()
        if both.numel() == 0:
            return a.sum() * 0.0 + b.sum() * 0.0
        logits = a[both] @ b[keys].t() / tau  # [classes in both, source classes]
        target = torch.searchsorted(keys, both)  # column of class c among the keys
        return F.cross_entropy(logits, target)

    loss = one_way(m_t, present_t, m_s, present_s)
    if symmetric:
        loss = 0.5 * (loss + one_way(m_s, present_s, m_t, present_t))
    return loss


def cb_thresholds(hist: torch.Tensor, portion: float, cap: float) -> torch.Tensor:
    """Per-class confidence above which ``portion`` of the class's histogram mass lies (CBST),
    capped at ``cap``; bins are [j/K, (j+1)/K); classes without mass get ``cap``."""
    K = hist.shape[1]
    from_top = hist.flip(1).cumsum(1)  # mass in the top k+1 bins
    total = from_top[:, -1:]
    k = (from_top < portion * total).sum(1)  # bins needed beyond the first, from the top
    thr = (K - 1 - k).float() / K
    return torch.where(total[:, 0] > 0, thr.clamp(max=cap), torch.full_like(thr, cap))


# -- the method ---------------------------------------------------------------------------------
@register_method("clst", description="contrastive centroids + temporal-ensemble self-training "
                                     "(reconstruction, no public code)")
class CLST(Method):
    """CLST reconstruction (see the module docstring); numbers are not the paper's."""

    Config = CLSTConfig

    def __init__(self, segmenter: nn.Module, cfg: CLSTConfig, ctx: MethodContext):
        super().__init__(segmenter, cfg, ctx)
        if ctx.world_size > 1:
            raise UserError("methods.clst: multi-process training is not supported yet (the "
                            "per-image ensemble is one file per run); run on one device")
        C = ctx.num_classes
        channels = self.feature_channels
        self.projection = None
        if cfg.projection == "mlp":
            self.projection = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True),
                                            nn.Conv2d(channels, cfg.projection_dim, 1))
            channels = cfg.projection_dim
        self.register_buffer("memory", torch.zeros(2, C, channels))  # source, target centroids
        self.register_buffer("memory_valid", torch.zeros(2, C, dtype=torch.bool))
        self.register_buffer("cb_hist", torch.zeros(C, 256, dtype=torch.float64))
        self.register_buffer("visits", torch.zeros(ctx.target_train_size, dtype=torch.int64))
        self.warmup = cfg.warmup_iters if cfg.warmup_iters >= 0 else \
            (0 if ctx.init_from else ctx.total_iters // 4)
        grid = segmenter.feature_size(*self._input_size(ctx))
        layout = EnsembleLayout(ctx.target_train_size, C, grid, cfg.ensemble_mode)
        self.ensemble = TemporalEnsemble(Path(ctx.scratch_dir) / ENSEMBLE_FILE, layout,
                                         cfg.ensemble_momentum)

    def _input_size(self, ctx: MethodContext) -> tuple[int, int]:
        if self.cfg.ensemble_input_size:
            return tuple(int(v) for v in self.cfg.ensemble_input_size)
        if ctx.target_images is None or len(ctx.target_images) == 0:
            raise UserError("methods.clst.ensemble_input_size: no un-augmented target images to "
                            "measure; set it to the target training size [H, W]")
        return tuple(int(v) for v in ctx.target_images[0]["image"].shape[-2:])

    def optimizers(self):
        specs = super().optimizers()
        if self.projection is not None:  # a new head: at the heads' learning rate
            mult = getattr(self.segmenter, "head_lr_mult", 10.0)
            specs["model"].param_groups.append({"name": "projection", "lr": self.cfg.lr * mult,
                                                "params": list(self.projection.parameters()),
                                                "lr_mult": mult})
        return specs

    # -- state: the ensemble file travels with the checkpoint ------------------------------------
    def get_extra_state(self) -> dict:
        # Every state_dict() is taken as a checkpoint: the file is flushed, checksummed and a new
        # undo-journal generation starts (udabench/ensemble.py).
        return {"ensemble": self.ensemble.state()}

    def set_extra_state(self, state: dict) -> None:
        self.ensemble.load_state(state["ensemble"])

    # -- pieces -------------------------------------------------------------------------------
    def _features(self, feat: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            feat = self.projection(feat)
        return F.normalize(feat.float(), dim=1)

    def _centroids(self, feat: torch.Tensor, label: torch.Tensor, domain: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        m, present = class_centroids(feat, label, self.ctx.num_classes)
        mom = self.cfg.centroid_momentum
        if mom > 0:  # blend with the memory (no gradient through it); memory-only classes count
            mem, valid = self.memory[domain], self.memory_valid[domain]
            blended = F.normalize(mom * mem + (1 - mom) * m, dim=1)
            m = torch.where((present & valid)[:, None], blended, torch.where(present[:, None], m, mem))
            present = present | valid
            self.memory[domain] = m.detach()
            self.memory_valid[domain] = present
        return m, present

    def _pseudo_labels(self, target: dict, out_hw: tuple[int, int]) -> tuple[torch.Tensor, dict]:
        cls, conf, valid = self.ensemble.lookup(target["index"], target["geometry"], out_hw)
        C = self.ctx.num_classes
        if self.cfg.threshold_mode == "class_balanced":
            bins = (conf[valid] * 256).long().clamp(0, 255)
            batch = torch.zeros(C * 256, dtype=torch.float64).index_add_(
                0, cls[valid] * 256 + bins, torch.ones(bins.numel(), dtype=torch.float64))
            self.cb_hist.mul_(self.cfg.cb_momentum).add_(batch.view(C, 256).to(self.cb_hist.device))
            thr = cb_thresholds(self.cb_hist.cpu(), self.cfg.portion, self.cfg.threshold)
        else:
            thr = torch.full((C,), self.cfg.threshold)
        keep = valid & (conf >= thr[cls])
        label = torch.where(keep, cls, torch.full_like(cls, IGNORE))
        logs = {"st_labelled": float(keep.float().mean()), "st_visited": float(valid.float().mean())}
        return label, logs

    def _update_ensemble(self, target: dict, probs: torch.Tensor) -> None:
        self.ensemble.update(target["index"], probs, target["geometry"])
        idx = torch.as_tensor(target["index"], device=self.visits.device).long()
        self.visits.index_add_(0, idx, torch.ones_like(idx))

    # -- the step -----------------------------------------------------------------------------
    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        c = self.cfg
        loss, logs, out_s = supervised_loss(self, source, c.aux_weight)
        if step < self.warmup or not target:
            return StepOutput({"model": loss}, logs)  # warm-up: source only, target never forwarded

        out_t = self.segment(target["image"])
        logits_t = out_t["out"]
        probs = logits_t.detach().float().softmax(1)
        if c.label_timing == "after_update":
            self._update_ensemble(target, probs)
        label_t, st_logs = self._pseudo_labels(target, tuple(logits_t.shape[-2:]))
        if c.label_timing == "before_update":
            self._update_ensemble(target, probs)
        label_t = label_t.to(logits_t.device)
        logs.update(st_logs)

        if c.w_st > 0:
            if bool((label_t != IGNORE).any()):
                l_st = F.cross_entropy(logits_t.float(), label_t, ignore_index=IGNORE)
            else:  # no pseudo-label yet: a zero that keeps the graph
                l_st = logits_t.float().sum() * 0.0
            loss = loss + c.w_st * l_st
            logs["st"] = float(l_st.detach())
        if c.w_cl > 0:
            f_s, f_t = self._features(out_s["feat"]), self._features(out_t["feat"])
            m_s, p_s = self._centroids(f_s, to_grid(source["label"], tuple(f_s.shape[-2:])), 0)
            m_t, p_t = self._centroids(f_t, to_grid(label_t, tuple(f_t.shape[-2:])), 1)
            l_cl = centroid_contrastive_loss(m_t, p_t, m_s, p_s, c.tau, c.symmetric)
            loss = loss + c.w_cl * l_cl
            logs["cl"] = float(l_cl.detach())
            logs["cl_classes"] = float((p_s & p_t).sum())
        return StepOutput({"model": loss}, logs)
