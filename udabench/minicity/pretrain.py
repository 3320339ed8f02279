"""Pretraining of a MiniCity backbone on the third procedural domain: MiniCity's ImageNet step.

A backbone learns the 64 shape-and-texture classes of :mod:`udabench.minicity.pretrain_data`,
then only the backbone's weights are kept. Two tasks on the same images:

- ``classification`` (ImageNet's form; MiT's recipe): one label per image through a global-average
  pool and a linear layer. With ``geometry = "standard"`` ResNets train at output stride 32, no
  dilation, as ImageNet classifiers are; the segmenter dilates layer3/layer4 afterwards, as
  DeepLabV2 does with torchvision's ImageNet weights.
- ``segmentation`` (the ResNet recipe, issue 19): every pixel's class (or background) through a
  1x1 convolution on the deepest map, upsampled to the crop, in ``geometry = "segmenter"``: the
  dilated output-stride-8 network MiniCity's segmenter runs. Classification weights left
  resnet-tiny fitting MiniCity's scenes worse than random weights (docs/minicity_pretraining.md).

The parameters (and state-dict keys) are the same in every geometry. The recipe of the family:
SGD with momentum and weight decay 1e-4 for ResNets (torchvision's ImageNet recipe), AdamW with
weight decay 0.05 for MiT (SegFormer's ImageNet pretraining follows PVT/DeiT), both with a linear
warm-up and a cosine decay; random resized crops and horizontal flips for training (label maps
move with the pixels), the central crop for scoring. BatchNorm trains normally; its running
statistics and affine parameters ship with the weights.

Seeded and deterministic: the same config, library versions and thread count give the same
weights bit for bit (tests/test_minicity_pretrain.py checks it on a tiny run).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from udabench.errors import ConfigError, UserError
from udabench.minicity.pretrain_data import (
    N_CLASSES,
    TEXTURES,
    PretrainDataParams,
    load_split,
)

OPTIMIZERS = ("sgd", "adamw")
# "standard": ResNets at output stride 32, as ImageNet classifiers are trained; "segmenter": the
# backbone exactly as MiniCity's segmenter runs it (ResNets dilated to output stride 8). MiT has
# one geometry (stride 32), the same under both names.
GEOMETRIES = ("standard", "segmenter")
# "classification": one label per image through a global-average pool, as ImageNet; "segmentation":
# every pixel's shape-and-texture class (or background) through a 1x1 convolution on the deepest
# map, upsampled to the input (a dense task; trained in the segmenter geometry).
TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class PretrainConfig:
    backbone: str = "resnet-tiny"
    seed: int = 0
    steps: int = 2400  # 16 epochs of the 19,200 training images
    batch_size: int = 128
    crop: int = 64  # side of the training crops (random resized) and of the scored centre crop
    task: str = "classification"  # one of TASKS
    geometry: str = "standard"  # one of GEOMETRIES
    optimizer: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    eval_train_per_class: int = 40  # training images scored for the final train accuracy
    data: PretrainDataParams = field(default_factory=PretrainDataParams)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"pretrain task '{self.task}': expected one of {', '.join(TASKS)}")
        if self.task == "segmentation" and self.geometry != "segmenter":
            raise ConfigError("pretrain task 'segmentation' is trained in the segmenter geometry: "
                              "set geometry = 'segmenter'")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"pretrain geometry '{self.geometry}': expected one of "
                              f"{', '.join(GEOMETRIES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"pretrain optimizer '{self.optimizer}': expected one of "
                              f"{', '.join(OPTIMIZERS)}")
        for name in ("steps", "batch_size", "crop", "eval_train_per_class"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pretrain {name} = {getattr(self, name)}: expected >= 1")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"pretrain warmup_steps = {self.warmup_steps}: expected 0..steps")
        if self.crop > self.data.size:
            raise ConfigError(f"pretrain crop = {self.crop}: larger than the {self.data.size}-pixel "
                              f"images")
        if self.eval_train_per_class > self.data.n_train_per_class:
            raise ConfigError(f"pretrain eval_train_per_class = {self.eval_train_per_class}: the "
                              f"training split has {self.data.n_train_per_class} per class")
        for name in ("lr", "weight_decay", "momentum"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise ConfigError(f"pretrain {name} = {value}: expected a finite number "
                                  f"{'> 0' if name == 'lr' else '>= 0'}")

    def to_dict(self) -> dict:
        return asdict(self)


def recipe(backbone: str, **overrides) -> PretrainConfig:
    """The default settings for a backbone: the ResNet recipe, or the transformer one for MiT.

    ResNets learn the dense task in the segmenter's geometry: classification at output stride 32
    (ImageNet's form) left resnet-tiny fitting MiniCity's source task 6 mIoU worse than random
    weights (its deepest map of a 64x64 crop is 2x2), in the segmenter geometry still 5 worse; the
    dense task ties random weights there and transfers further (docs/minicity_pretraining.md,
    issue 19). MiT keeps classification, which already helps it on both. About an hour of one
    CPU core for resnet-tiny, 15 minutes for mit-tiny."""
    if backbone.startswith("mit"):
        base = PretrainConfig(backbone=backbone, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                              steps=5000, warmup_steps=250)
    else:
        base = PretrainConfig(backbone=backbone, task="segmentation", geometry="segmenter")
    return replace(base, **overrides)


# ----------------------------------------------------------------------------- the network

def standard_geometry(backbone: nn.Module) -> nn.Module:
    """A dilated ResNet backbone turned, in place, into its standard output-stride-32 form (the
    form ImageNet classifiers are trained in): every stage after the first strides 2 in its first
    block, no convolution is dilated. Other backbones are returned unchanged. No parameter
    changes shape, so the weights load back into the dilated network as they are."""
    from udabench.models.backbones import ResNetBackbone

    if not isinstance(backbone, ResNetBackbone):
        return backbone
    body = backbone.body
    for name in ("layer2", "layer3", "layer4"):
        stage = getattr(body, name)
        for conv in (m for m in stage.modules() if isinstance(m, nn.Conv2d)):
            if conv.dilation != (1, 1):
                conv.dilation = (1, 1)
                conv.padding = (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
        first = stage[0]
        # timm strides BasicBlocks in conv1 and Bottlenecks in the 3x3 conv2
        if isinstance(first, BasicBlock):
            first.conv1.stride = (2, 2)
        elif isinstance(first, Bottleneck):
            first.conv2.stride = (2, 2)
        else:
            raise UserError(f"pretraining: unknown ResNet block {type(first).__name__} in {name}")
        if first.downsample is not None:
            first.downsample[0].stride = (2, 2)
    return backbone


class PretrainClassifier(nn.Module):
    """Input normalisation of the backbone's kind -> backbone -> mean of the deepest map -> linear."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        from udabench.models.normalisation import InputNorm

        super().__init__()
        self.normalize = InputNorm(backbone.normalisation)
        self.backbone = backbone
        self.fc = nn.Linear(int(backbone.levels[-1].channels), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        deepest = self.backbone(self.normalize(images))[-1]
        return self.fc(deepest.mean(dim=(2, 3)))


class PretrainSegmenter(nn.Module):
    """Input normalisation -> backbone -> 1x1 convolution on the deepest map -> bilinear upsampling
    to the input: per-pixel logits (the linear classifier of :class:`PretrainClassifier`, applied
    at every position instead of after pooling)."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        from udabench.models.normalisation import InputNorm

        super().__init__()
        self.normalize = InputNorm(backbone.normalisation)
        self.backbone = backbone
        self.fc = nn.Conv2d(int(backbone.levels[-1].channels), num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        deepest = self.backbone(self.normalize(images))[-1]
        return F.interpolate(self.fc(deepest), size=images.shape[-2:], mode="bilinear",
                             align_corners=False)


def build_classifier(cfg: PretrainConfig) -> nn.Module:
    """The backbone as MiniCity's segmenter builds it (random init, seeded), in the configured
    geometry, with a fresh classifier (per image, or per pixel for the segmentation task)."""
    from udabench.models import SegmenterConfig, build_backbone

    try:
        seg_cfg = SegmenterConfig(backbone=cfg.backbone, init="scratch")
    except UserError as exc:
        raise UserError(f"pretraining --backbone: {exc}") from None
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(seg_cfg)
    if cfg.geometry == "standard":
        backbone = standard_geometry(backbone)
    if cfg.task == "segmentation":
        return PretrainSegmenter(backbone, N_CLASSES + 1)  # + BACKGROUND
    return PretrainClassifier(backbone, N_CLASSES)


# ------------------------------------------------------------------------------ training

# ImageNet's RandomResizedCrop, with a larger smallest crop: the object fills a fifth to a half of
# our images, so crops of 8% of the area (torchvision's default) would mostly cut it away.
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def _batch(images: np.ndarray, idx: np.ndarray, crop: int, rng: np.random.Generator | None,
           maps: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(float [B, 3, crop, crop] in [0, 1], the label maps cropped alike as int64 [B, crop, crop]
    or None without ``maps``). With rng: random resized crops (area and aspect drawn as ImageNet
    training does; images bilinear, label maps nearest) and horizontal flips; without: the centre
    crop (as ImageNet scoring takes the central 87.5%)."""
    size = images.shape[1]
    batch = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float().div_(255.0)
    labels = None if maps is None else torch.from_numpy(maps[idx].astype(np.int64))
    if rng is None:
        start = (size - crop) // 2
        window = (slice(start, start + crop), slice(start, start + crop))
        return (batch[:, :, window[0], window[1]].contiguous(),
                None if labels is None else labels[:, window[0], window[1]].contiguous())
    n = len(idx)
    area = rng.uniform(*CROP_SCALE, n)
    ratio = np.exp(rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1]), n))
    w = np.minimum(np.sqrt(area * ratio), 1.0)  # fractions of the image side
    h = np.minimum(np.sqrt(area / ratio), 1.0)
    cx = rng.uniform(-1, 1, n) * (1 - w)  # crop centre in [-1, 1] coordinates, inside the image
    cy = rng.uniform(-1, 1, n) * (1 - h)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(torch.from_numpy(theta), [n, 3, crop, crop], align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if labels is not None:
        labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="border",
                               align_corners=False)[:, 0].long()
    return out, labels


def lr_at(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 0 at cfg.steps (step counts from 0)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


def _optimizer(cfg: PretrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, crop: int, batch_size: int = 256) -> np.ndarray:
    """Top-1 class of every image's centre crop (of every pixel of it, for a per-pixel model),
    eval mode."""
    was_training = model.training
    model.eval()
    preds = [model(_batch(images, np.arange(start, min(start + batch_size, len(images))), crop,
                          None)[0]).argmax(1).numpy()
             for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return np.concatenate(preds)


def _centre(labels: np.ndarray, crop: int) -> np.ndarray:
    """Class labels as they are; label maps [N, S, S] cut to the scored centre crop."""
    if labels.ndim == 1:
        return labels
    start = (labels.shape[1] - crop) // 2
    return labels[:, start:start + crop, start:start + crop]


def scores(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy, and how often the shape and the texture alone are right. For label maps:
    pixel accuracy over all pixels, shape and texture alone over the object pixels."""
    n_tex = len(TEXTURES)
    accuracy = float(np.mean(pred == labels))
    if pred.ndim > 1:
        on_object = labels < N_CLASSES
        pred, labels = pred[on_object], labels[on_object]
    return {"accuracy": accuracy,
            "shape_accuracy": float(np.mean(pred // n_tex == labels // n_tex)),
            "texture_accuracy": float(np.mean(pred % n_tex == labels % n_tex))}


@dataclass
class PretrainResult:
    state_dict: dict[str, torch.Tensor]  # the backbone body's weights (what model.init files hold)
    train_accuracy: float  # centre crops of the first eval_train_per_class training images/class
    heldout_accuracy: float  # the whole val split (images never trained on)
    final_loss: float  # mean training loss over the last 50 steps
    heldout_scores: dict[str, float] = field(default_factory=dict)  # + shape / texture alone
    history: list[dict] = field(default_factory=list)
    data_seconds: float = 0.0
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0


def pretrain(cfg: PretrainConfig, log: Callable[[str], None] | None = None,
             log_every: int = 50, cache_root: Path | None = None) -> PretrainResult:
    """Render the data (or read it from the cache under ``cache_root``), train the classifier,
    score it, return the backbone's weights."""
    log = log or (lambda _msg: None)
    model = build_classifier(cfg)  # first: a bad backbone name fails before any work
    wall0, cpu0 = time.perf_counter(), time.process_time()
    log(f"rendering {cfg.data.count('train')} training and {cfg.data.count('val')} held-out "
        f"images ({cfg.data.size}x{cfg.data.size}, key {cfg.data.key()})")
    dense = cfg.task == "segmentation"
    train_x, train_y = load_split(cfg.data, "train", cache_root, dense=dense)
    val_x, val_y = load_split(cfg.data, "val", cache_root, dense=dense)
    data_seconds = time.perf_counter() - wall0
    log(f"rendered in {data_seconds:.0f} s")
    rng = np.random.default_rng([cfg.seed, 1])
    opt = _optimizer(cfg, model)
    model.train()
    order, cursor = rng.permutation(len(train_x)), 0
    losses: list[float] = []
    history: list[dict] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):  # a new epoch: reshuffle, drop the remainder
            order, cursor = rng.permutation(len(train_x)), 0
        idx = order[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        x, y = _batch(train_x, idx, cfg.crop, rng, train_y if dense else None)
        if y is None:
            y = torch.from_numpy(train_y[idx])
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss = F.cross_entropy(model(x), y)
        if not math.isfinite(loss.item()):
            raise UserError(f"pretraining diverged at step {step} (loss {loss.item()}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            entry = {"step": step + 1, "loss": float(np.mean(losses[-log_every:])),
                     "lr": lr_at(cfg, step), "seconds": round(time.perf_counter() - t0, 1)}
            history.append(entry)
            log(f"step {entry['step']}/{cfg.steps}  loss {entry['loss']:.3f}  lr {entry['lr']:.2e}  "
                f"{entry['seconds']:.0f} s")
    train_seconds = time.perf_counter() - t0
    n_eval = cfg.eval_train_per_class * N_CLASSES  # the first images: balanced by construction
    train_acc = scores(predict(model, train_x[:n_eval], cfg.crop),
                       _centre(train_y[:n_eval], cfg.crop))["accuracy"]
    heldout = scores(predict(model, val_x, cfg.crop), _centre(val_y, cfg.crop))
    val_acc = heldout["accuracy"]
    log(f"accuracy: train {train_acc:.3f}, held-out {val_acc:.3f} (shape alone "
        f"{heldout['shape_accuracy']:.3f}, texture alone {heldout['texture_accuracy']:.3f})")
    state = {k: v.detach().clone().contiguous() for k, v in model.backbone.body.state_dict().items()}
    return PretrainResult(state, train_acc, val_acc, float(np.mean(losses[-50:])), heldout,
                          history, data_seconds, train_seconds, time.process_time() - cpu0)


def write_weights(result: PretrainResult, cfg: PretrainConfig, out_dir: Path, command: str,
                  extra: dict | None = None) -> tuple[Path, dict]:
    """``<out_dir>/<backbone>.safetensors`` (the backbone body's state dict, a ``model.init``
    file) and its sidecar ``<backbone>.json``, each written atomically (sidecar last)."""
    from safetensors.torch import save_file

    from udabench.minicity import pretrained
    from udabench.minicity.pretrain_data import (
        CLASSES,
        PRETRAIN_GENERATOR_VERSION,
        SHAPES,
        TEXTURES,
    )

    out_dir = Path(out_dir)
    path = out_dir / f"{cfg.backbone}{pretrained.SUFFIX}"
    tmp = out_dir / f".{path.name}.tmp"
    save_file(result.state_dict, str(tmp), metadata={"backbone": cfg.backbone,
                                                      "generator_key": cfg.data.key()})
    os.chmod(tmp, 0o644)  # package data, readable by all (safetensors writes 0600)
    os.replace(tmp, path)
    meta = {
        "format": pretrained.SIDECAR_FORMAT,
        "backbone": cfg.backbone,
        "file": path.name,
        "sha256": pretrained.sha256_of(path),
        "bytes": path.stat().st_size,
        "tensors": len(result.state_dict),
        "parameters": int(sum(v.numel() for k, v in result.state_dict.items()
                              if v.is_floating_point() and "running_" not in k)),
        "layout": "the backbone body's state dict, as a model.init weights file holds it "
                  "(load into Segmenter.backbone.body)",
        "command": command,
        "generator": {"name": "minicity-pretrain", "version": PRETRAIN_GENERATOR_VERSION,
                      "key": cfg.data.key(), "params": cfg.data.to_dict(),
                      "classes": len(CLASSES), "shapes": list(SHAPES), "textures": list(TEXTURES)},
        "training": cfg.to_dict(),
        "results": {"train_accuracy": round(result.train_accuracy, 4),
                    "heldout_accuracy": round(result.heldout_accuracy, 4),
                    **{f"heldout_{k}": round(v, 4) for k, v in result.heldout_scores.items()
                       if k != "accuracy"},
                    "final_loss": round(result.final_loss, 4), "history": result.history},
        **(extra or {}),
    }
    side = out_dir / f"{cfg.backbone}.json"
    tmp = out_dir / f".{side.name}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, side)
    return path, meta
