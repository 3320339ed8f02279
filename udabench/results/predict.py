"""``udabench predict``: a finished run's predictions on the benchmark's target images, as PNGs.

Two formats:
- ``color``: ``color/<city>/<stem>.png`` (the class map in the official palette),
  ``overlay/<city>/<stem>.png`` (the image blended 50% with it) and, when labels exist,
  ``side_by_side/<city>/<stem>.png`` (overlay | prediction | ground truth).
- ``cityscapes``: ``<city>/<stem>.png`` holding the target dataset's own label ids (Cityscapes
  labelIds), which is what the official evaluator (``csEvalPixelLevelSemanticLabeling``, which
  globs ``<city>_<seq>_<frame>*.png`` below its results folder) and the test server take, and what
  ``udabench score --encoding labelid`` reads. The folders come from the target's descriptor (the
  ``*`` folders of its file pattern), so another target dataset gets its own layout.

Predictions are written at each label's own size (the size the run's evaluation scored at, and
the size ``udabench score`` requires); images without a label (the train split) at the image size.

Predictions are made exactly as the run's evaluation made them (same dataset view, network,
input size, flip/scales and label resolution), so exported labelIds re-score to result.json.
Everything is written into a hidden staging folder renamed into place at the end: an interrupted
export leaves nothing under the requested name, and an existing non-empty folder is never touched.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from udabench.data.pngio import read_png_info, read_rgb, write_png
from udabench.errors import UserError
from udabench.taxonomy import PALETTE, TRAIN_ID_TO_LABEL_ID

FORMATS = ("color", "cityscapes")
SPLITS = ("val", "train")
_CITY_STEM = re.compile(r"^(.+)_\d+_\d+$")  # <city>_<seq>_<frame>
_PALETTE_T = torch.from_numpy(np.array(PALETTE))
_LABEL_ID_T = torch.from_numpy(np.array(TRAIN_ID_TO_LABEL_ID))
SEPARATOR = 4  # white pixels between the panels of a side-by-side picture


# -- pixels ------------------------------------------------------------------------------------
def colorize(class_map: torch.Tensor) -> torch.Tensor:
    """trainIds [H, W] (uint8) -> RGB [3, H, W] in the official palette (255 = ignore -> black)."""
    return _PALETTE_T[class_map.long()].permute(2, 0, 1).contiguous()


def to_label_ids(class_map: torch.Tensor) -> torch.Tensor:
    """trainIds [H, W] -> Cityscapes labelIds [H, W] (uint8); ignore becomes 0 ("unlabeled")."""
    return _LABEL_ID_T[class_map.long()]


def overlay(image: torch.Tensor, color: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``image`` blended with ``color`` (both uint8 [3, H, W]); ``alpha`` is the colour's weight."""
    if image.shape != color.shape:
        raise ValueError(f"image {tuple(image.shape)} and colour map {tuple(color.shape)} differ in size")
    mixed = image.float() * (1.0 - alpha) + color.float() * alpha
    return mixed.round_().clamp_(0, 255).to(torch.uint8)


def side_by_side(*panels: torch.Tensor, gap: int = SEPARATOR) -> torch.Tensor:
    """uint8 [3, H, W] panels of one height, left to right, with white gaps between them."""
    height = panels[0].shape[1]
    if any(p.shape[1] != height for p in panels):
        raise ValueError("side-by-side panels need the same height")
    white = torch.full((3, height, gap), 255, dtype=torch.uint8)
    parts: list[torch.Tensor] = []
    for i, p in enumerate(panels):
        parts += ([white] if i else []) + [p]
    return torch.cat(parts, dim=2)


def city_of(stem: str) -> str:
    """The Cityscapes city of a stem (``pixelburg_000003_000019`` -> ``pixelburg``); '' if none."""
    m = _CITY_STEM.match(stem)
    return m.group(1) if m else ""


def relative_path(stem: str) -> Path:
    """Where one image's file goes below a format folder: ``<city>/<stem>.png`` (flat if no city)."""
    city = city_of(stem)
    return Path(city, f"{stem}.png") if city else Path(f"{stem}.png")


# -- the run -----------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A run's evaluated network, put back together from its directory and last checkpoint."""

    path: Path
    plan: Any
    bench: Any
    net: torch.nn.Module
    settings: Any  # EvalSettings of the run
    device: torch.device
    amp_dtype: torch.dtype | None
    checkpoint: Path

    def dataset(self, split: str, console: Any = None) -> Any:
        """The target ``split`` as the evaluator sees it (val: labelled; train: images only)."""
        if split not in SPLITS:
            raise UserError(f"--split {split}: expected one of {', '.join(SPLITS)}")
        from udabench.data.datasets import build_dataset

        from udabench.engine.plan import data_root_of

        _, target_root = self.bench.roots(data_root_of(self.plan), console)
        return build_dataset(self.bench.target_kind, target_root, split, with_labels=split == "val",
                             transform=self.bench.eval_transform())


def load_run(run_path: Path, device: str | None = None, console: Any = None) -> LoadedRun:
    """Open a run directory and load its last checkpoint into the network its evaluation used."""
    from udabench.engine.evaluate_run import restore

    run_path = Path(run_path)
    if not run_path.is_dir():
        raise UserError(f"{run_path} is not a run directory (expected runs/<benchmark>/<method>/<run-id>)")
    r = restore(run_path, device, console)
    plan, bench, settings = r.plan, r.bench, r.settings
    _, net = r.method.eval_network()
    net.eval()
    return LoadedRun(run_path, plan, bench, net, settings, r.device, r.amp_dtype, r.checkpoint)


def select(ids: list[str], wanted: tuple[str, ...] = (), limit: int | None = None,
           where: str = "the split") -> list[int]:
    """Indices of the images to predict: the ``wanted`` ids (file names allowed) or all, then the
    first ``limit``. An unknown id is a UserError naming it and a few known ones."""
    from udabench.scoring import match_id

    position = {image_id: i for i, image_id in enumerate(ids)}
    chosen: list[int] = []
    for token in wanted:
        for part in filter(None, (p.strip() for p in token.split(","))):
            key = part if part in position else match_id(Path(part).name, position)
            if key not in position:
                sample = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
                raise UserError(f"--images {part}: no such image in {where} ({len(ids)} images: {sample})")
            if position[key] not in chosen:
                chosen.append(position[key])
    chosen = chosen if wanted else list(range(len(ids)))
    return chosen[:limit] if limit is not None else chosen


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that already holds anything (nothing on disk is ever overwritten)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder that does not exist yet or is empty")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty; nothing was written "
                        "(remove it or choose another --out)")


# -- export ------------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    out: Path
    fmt: str
    images: int
    files: int
    labelled: bool


def _write_one(stage: Path, fmt: str, stem: str, pred: torch.Tensor, image_path: Path,
               label: torch.Tensor | None, rel: Path | None = None,
               export_lut: torch.Tensor | None = None) -> int:
    """Write one image's files below ``stage``; ``rel`` is its path below each format folder
    (default: ``<city>/<stem>.png``), ``export_lut`` trainId -> raw id (default: labelIds)."""
    rel = relative_path(stem) if rel is None else rel
    if fmt == "cityscapes":
        ids = to_label_ids(pred) if export_lut is None else export_lut[pred.long()]
        write_png(stage / rel, ids)
        return 1
    color = colorize(pred)
    image = read_rgb(image_path)
    if tuple(image.shape[1:]) != tuple(pred.shape):  # predictions are at label size, like the scorer
        from torch.nn.functional import interpolate

        image = interpolate(image[None].float(), size=tuple(pred.shape), mode="bilinear",
                            align_corners=False, antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
    blended = overlay(image, color)
    write_png(stage / "color" / rel, color)
    write_png(stage / "overlay" / rel, blended)
    if label is None:
        return 2
    write_png(stage / "side_by_side" / rel, side_by_side(blended, color, colorize(label)))
    return 3


def export_predictions(run: LoadedRun, dataset: Any, indices: list[int], out: Path, fmt: str,
                       progress: Callable[[int], None] | None = None) -> ExportSummary:
    """Predict ``dataset[i]`` for each index and write the PNGs of ``fmt`` into ``out``."""
    from udabench.engine.evaluator import predict

    spec = dataset.spec
    export_lut = torch.from_numpy(np.array(spec.export_lut))
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    files, labelled = 0, False
    try:
        for i in indices:
            sample = dataset[i]
            label = sample.get("label")
            if label is not None:
                size = tuple(label.shape[-2:])
                labelled = True
            else:  # the original image size, which is what the official evaluator compares with
                info = read_png_info(dataset.pairs[i].image)
                size = (info.height, info.width)
            image = sample["image"].unsqueeze(0).to(run.device)
            pred = predict(run.net, image, size, run.settings, run.amp_dtype)[0].cpu()
            pair = dataset.pairs[i]
            files += _write_one(stage, fmt, sample["id"], pred, pair.image, label,
                                spec.prediction_path(sample["id"], pair.groups), export_lut)
            if progress is not None:
                progress(1)
        check_out_dir(out)  # created while we worked?
        if out.is_dir():
            out.rmdir()
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ExportSummary(out, fmt, len(indices), files, labelled)
