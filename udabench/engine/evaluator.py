"""Evaluation at the benchmark's protocol: resize the input, upsample logits to the label size,
argmax, one streaming confusion matrix (docs/protocol.md section 5).

The size rule (docs/datasets.md): every prediction is made at its own label's size, whatever the
image's size, so a validation label whose size differs from its image is scored as it is, never
resized; ``udabench predict`` writes at that size and ``udabench score`` requires it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from udabench.data.loaders import leave_stop_signals_to_the_run
from udabench.metrics import ConfusionMeter, Score


@dataclass
class EvalSettings:
    input_size: tuple[int, int]  # (height, width) fed to the network
    align_corners: bool = False
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def describe(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "align_corners": self.align_corners,
            "flip": self.flip,
            "scales": list(self.scales),
            "logits": "upsampled bilinearly to each label's own size",
        }


@dataclass
class EvalResult:
    matrix: np.ndarray
    ids: list[str] = field(default_factory=list)
    per_image: list[np.ndarray] = field(default_factory=list)
    label_sizes: dict[tuple[int, int], int] = field(default_factory=dict)  # (H, W) -> images

    @property
    def label_size(self) -> tuple[int, int] | None:
        """The label resolution of most images (logits are upsampled to each label's own size)."""
        return max(self.label_sizes, key=self.label_sizes.get) if self.label_sizes else None

    def score(self, subsets: tuple[str, ...], convention: str) -> Score:
        from udabench.metrics import score_matrix

        return score_matrix(self.matrix, subsets, convention)


def _first(batch: list) -> object:
    """Collate of a batch of one sample: the sample itself."""
    return batch[0]


def _logits(net: nn.Module, image: torch.Tensor, size: tuple[int, int], align: bool) -> torch.Tensor:
    out = net(image)
    logits = out["out"] if isinstance(out, dict) else out
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=align)


@torch.no_grad()
def predict(
    net: nn.Module, image_u8: torch.Tensor, label_size: tuple[int, int], settings: EvalSettings,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Class map (uint8, [B, H, W] at ``label_size``) for a uint8 image batch."""
    x = image_u8.float().div_(255.0)
    probs = None
    autocast = (
        torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )
    with autocast:
        for scale in settings.scales:
            h, w = (round(s * scale) for s in settings.input_size)
            inp = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            views = [(inp, False)] + ([(inp.flip(-1), True)] if settings.flip else [])
            for view, flipped in views:
                logit = _logits(net, view, label_size, settings.align_corners)
                p = logit.softmax(1)
                p = p.flip(-1) if flipped else p
                probs = p if probs is None else probs + p
    return probs.argmax(1).to(torch.uint8)


def evaluate(
    net: nn.Module,
    dataset: Dataset,
    settings: EvalSettings,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Score ``net`` (put in eval mode for the duration) on ``dataset`` (image + label samples)."""
    indices = list(range(rank, len(dataset), world_size))
    subset = torch.utils.data.Subset(dataset, indices)
    loader = DataLoader(subset, batch_size=1, num_workers=num_workers, collate_fn=_first,
                        worker_init_fn=leave_stop_signals_to_the_run)
    meter = ConfusionMeter(device=device, keep_per_image=True)
    was_training = net.training
    net.eval()
    # torch.compile'd training graphs are not reused for no-grad evaluation (inductor on the CPU
    # fails on them in torch 2.14): evaluate the module's own forward.
    compiled = getattr(net, "_compiled_call_impl", None)
    if compiled is not None:
        net._compiled_call_impl = None
    sizes: dict[tuple[int, int], int] = {}
    columns = (TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, transient=True, disable=not progress or rank != 0) as bar:
            task = bar.add_task("eval", total=len(indices))
            for sample in loader:
                image = sample["image"].unsqueeze(0).to(device)
                label = sample["label"].to(device)
                size = tuple(label.shape[-2:])
                sizes[size] = sizes.get(size, 0) + 1
                pred = predict(net, image, size, settings, amp_dtype)[0]
                meter.update(pred, label, image_id=sample["id"])
                bar.advance(task)
    finally:
        net.train(was_training)
        if compiled is not None:
            net._compiled_call_impl = compiled
    ids, per_image = meter.image_ids, meter.per_image
    if world_size > 1:
        meter.all_reduce()
        gathered: list = [None] * world_size
        torch.distributed.all_gather_object(gathered, (ids, per_image))
        ids = [i for part in gathered for i in part[0]]
        per_image = [m for part in gathered for m in part[1]]
    return EvalResult(meter.matrix.cpu().numpy(), ids, per_image, sizes)
