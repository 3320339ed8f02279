"""Pseudo-label rules: class-balanced thresholds (CBST), thresholded arg-max, and cutting a stored
per-image label map through a training batch's own crop/scale/flip."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

IGNORE = 255


class ConfidenceCollector:
    """Per-class lists of the max-softmax of pixels predicted as that class (CBST step 1).

    As the official code (``ds_rate``): for each image and each class, that class's pixels in
    raster order, every ``stride``-th one kept."""

    def __init__(self, num_classes: int, stride: int = 1):
        self.num_classes, self.stride = num_classes, stride
        self.values: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]

    def add(self, probs: torch.Tensor) -> None:
        confs, preds = probs.float().max(1)
        for conf, pred in zip(confs.cpu(), preds.cpu()):  # one image at a time
            conf, pred = conf.flatten(), pred.flatten()
            for c in pred.unique().tolist():
                self.values[c].append(conf[pred == c][:: self.stride])

    def thresholds(self, portion: float, rank_rule: str = "official") -> torch.Tensor:
        """lambda_c per class from class c's confidences sorted descending.

        ``official`` (CBST/CRST code): the value at 0-based index floor(p * N_c) - 1, and 1 when
        floor(p * N_c) = 0 (too few pixels: nothing of that class is pseudo-labelled).
        ``floor``: the value at index floor(p * N_c) (udabench before the fidelity audit).
        A class nobody predicts gets lambda_c = 1.
        """
        out = torch.ones(self.num_classes)
        for c, chunks in enumerate(self.values):
            if not chunks:
                continue
            v = torch.cat(chunks)
            n = v.numel()
            k = int(math.floor(portion * n))
            if rank_rule == "official":
                if k == 0:
                    continue
                rank = min(k - 1, n - 1)
            else:
                rank = min(k, n - 1)
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


def batch_window_labels(store: np.ndarray, target: dict) -> torch.Tensor:
    """The stored label maps (``store[index]``) of a target batch, through its own geometry."""
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


def ordered_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    """Batches of a (label-free) dataset in index order, for pseudo-labelling passes."""
    from udabench.data.loaders import collate, leave_stop_signals_to_the_run

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate, worker_init_fn=leave_stop_signals_to_the_run)
