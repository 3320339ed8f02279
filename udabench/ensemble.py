"""File-backed temporal ensemble of target predictions (CLST), with an exact-resume undo journal.

One record per target image, at the network's OUTPUT resolution for the un-augmented training size
(the "grid", e.g. 64x128 for a 512x1024 input at stride 8), in an ``np.memmap`` file:

- ``probs_fp16``: float16 ``[N, C+1, gh, gw]``: the bias-corrected EMA of the softmax (C planes)
  and a per-pixel visit count (plane C; float16 holds integers exactly up to 2048, where it stops:
  a^2048 is negligible for any useful momentum). Cityscapes train: 2975 x 20 x 64 x 128 x 2 bytes
  = 0.91 GiB.
- ``top1_uint8``: uint8 ``[N, 3, gh, gw]``: arg-max class, round(confidence * 255), visit count
  (saturating at 255; past it the EMA weight differs from the exact one by under a^255 (1-a)).
  Approximation: the EMA of a distribution is kept as its top-1 entry only; mass of other classes
  is taken as 0 when the top class changes.

Visits are counted per PIXEL, so bias correction is exact under crops: after n visits a pixel holds
E_hat_n = (a (1-a^(n-1)) E_hat_(n-1) + (1-a) p) / (1-a^n), i.e. EMA / (1 - a^n) (E_hat_1 = p).

Crops, random scales and flips: a grid cell is updated when its centre lies inside the valid (not
padded) part of the crop window in the resized full image; the (un-flipped) prediction is sampled
bilinearly at that centre. Look-ups go the other way: each logit cell takes the nearest grid cell.

Exact resume: the file is ahead of the last checkpoint as soon as training continues. Before an
image's record is first modified after a checkpoint of generation g, its old bytes are appended to
``<file>.journal.<g>`` (and fsynced). ``load_state`` of generation g replays journals >= g, newest
first, which puts the file back exactly as it was at checkpoint g (verified by a CRC-32 recorded in
the state). Journals older than the previous generation are deleted. Every ``state()`` call is
treated as a checkpoint. Extra disk: at most one copy of each record per two checkpoint intervals.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from udabench.errors import UserError

MODES = ("probs_fp16", "top1_uint8")
_COUNT_CAP = {"probs_fp16": 2048, "top1_uint8": 255}
_INDEX_BYTES = 8


@dataclass(frozen=True)
class EnsembleLayout:
    num_images: int
    num_classes: int
    grid: tuple[int, int]  # (gh, gw): logits size for the un-augmented target training size
    mode: str = "probs_fp16"

    @property
    def planes(self) -> int:
        return self.num_classes + 1 if self.mode == "probs_fp16" else 3

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.mode == "probs_fp16" else np.uint8)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.num_images, self.planes, *self.grid)

    @property
    def row_bytes(self) -> int:
        return self.planes * self.grid[0] * self.grid[1] * self.dtype.itemsize

    @property
    def file_bytes(self) -> int:
        return self.num_images * self.row_bytes


def _axis(full: int, start: int, valid: int, crop: int, out: int, grid: int
          ) -> tuple[int, int, torch.Tensor, torch.Tensor | None]:
    """Grid cells whose centre lies in [start, start+valid) of the full image; where those centres
    fall in the crop in grid_sample's normalised coordinates (align_corners=False); and, when every
    centre lands exactly on a logit cell centre (no random scale, stride-aligned crop), their
    logit indices, so the update is a plain gather with no interpolation."""
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) * (full / grid)
    inside = torch.nonzero((centres >= start) & (centres < start + valid)).flatten()
    if inside.numel() == 0:
        return 0, 0, torch.empty(0), None
    i0, i1 = int(inside[0]), int(inside[-1]) + 1
    at = (centres[i0:i1] - start) * (out / crop) - 0.5  # position in logit cells
    exact = at.round()
    index = exact.long() if bool(((at - exact).abs() < 1e-6).all()) else None
    return i0, i1, (2.0 * (centres[i0:i1] - start) / crop - 1.0).float(), index


def _lookup_axis(full: int, start: int, valid: int, crop: int, out: int, grid: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``out`` logit cells across a crop: nearest grid index, and inside-image mask."""
    centres = (torch.arange(out, dtype=torch.float64) + 0.5) * (crop / out)
    inside = centres < valid
    idx = ((start + centres) * (grid / full)).floor().long().clamp(0, grid - 1)
    return idx, inside


def _geometry(geometry: dict[str, torch.Tensor], b: int) -> tuple[int, int, int, int, int, int, bool]:
    hf, wf = (int(v) for v in geometry["full_size"][b])
    top, left, ch, cw = (int(v) for v in geometry["crop"][b])
    return hf, wf, top, left, ch, cw, bool(geometry["flip"][b])


class TemporalEnsemble:
    def __init__(self, path: Path, layout: EnsembleLayout, momentum: float):
        if layout.mode not in MODES:
            raise UserError(f"ensemble mode {layout.mode!r} is not one of {', '.join(MODES)}")
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"ensemble momentum {momentum!r} must be in [0, 1)")
        self.path, self.layout, self.momentum = Path(path), layout, float(momentum)
        self.cap = _COUNT_CAP[layout.mode]
        n = torch.arange(self.cap + 1, dtype=torch.float64)
        a = self.momentum
        self.weights = (a * (1 - a ** n) / (1 - a ** (n + 1))).float()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists() or self.path.stat().st_size != layout.file_bytes
        self.created = created
        if created:
            self._zero_file()
        self.mm = np.memmap(self.path, dtype=layout.dtype, mode="r+", shape=layout.shape)
        self.generation = 0
        self.journaled: set[int] = set()
        # A file left by a crashed run that never checkpointed is stale: it is zeroed on first use
        # unless load_state() brought it back to a checkpoint first.
        self._ready = created and not self._journals()

    # -- file housekeeping -----------------------------------------------------------------------
    def _zero_file(self) -> None:
        with open(self.path, "wb") as f:  # truncate, then extend: a sparse file of zeros
            f.truncate(self.layout.file_bytes)

    def _journal(self, generation: int) -> Path:
        return self.path.with_name(f"{self.path.name}.journal.{generation}")

    def _journals(self) -> dict[int, Path]:
        out = {}
        for p in self.path.parent.glob(f"{self.path.name}.journal.*"):
            suffix = p.name.rsplit(".", 1)[-1]
            if suffix.isdigit():
                out[int(suffix)] = p
        return out

    def _ensure_ready(self) -> None:
        if not self._ready:
            for p in self._journals().values():
                p.unlink()
            del self.mm
            self._zero_file()
            self.mm = np.memmap(self.path, dtype=self.layout.dtype, mode="r+", shape=self.layout.shape)
            self._ready = True

    def _records(self, path: Path) -> list[tuple[int, bytes]]:
        size = _INDEX_BYTES + self.layout.row_bytes
        data = path.read_bytes()
        # A trailing partial record comes from a crash during the append: the row it guards was
        # not modified yet (write-ahead), so it is safely ignored.
        return [(int.from_bytes(data[o:o + _INDEX_BYTES], "little"), data[o + _INDEX_BYTES:o + size])
                for o in range(0, len(data) - size + 1, size)]

    def _journal_rows(self, indices: list[int]) -> None:
        """Write-ahead: save the checkpoint-time bytes of rows about to change for the first time."""
        fresh = [i for i in dict.fromkeys(indices) if i not in self.journaled]
        if not fresh:
            return
        with open(self._journal(self.generation), "ab") as f:
            for i in fresh:
                f.write(int(i).to_bytes(_INDEX_BYTES, "little") + self.mm[i].tobytes())
            f.flush()
            os.fsync(f.fileno())
        self.journaled.update(fresh)

    def checksum(self) -> int:
        crc = 0
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
        return crc

    # -- checkpointing ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Flush, open a new journal generation, describe the file for load_state()."""
        self._ensure_ready()
        self.mm.flush()
        self.generation += 1
        self.journaled = set()
        for g, p in self._journals().items():
            if g < self.generation - 1:  # the previous generation stays until this one is saved
                p.unlink()
        return {"generation": self.generation, "mode": self.layout.mode,
                "shape": list(self.layout.shape), "bytes": self.layout.file_bytes,
                "crc32": self.checksum(), "file": self.path.name}

    def load_state(self, state: dict[str, Any]) -> None:
        if list(state["shape"]) != list(self.layout.shape) or state["mode"] != self.layout.mode:
            raise UserError(f"{self.path}: the checkpoint's ensemble is {state['mode']} "
                            f"{state['shape']}, this run needs {self.layout.mode} {list(self.layout.shape)}")
        if self.created or self.path.stat().st_size != state["bytes"]:
            raise UserError(f"{self.path}: ensemble file missing or not {state['bytes']} bytes; "
                            "the run directory's state/ folder must travel with its checkpoint")
        g = int(state["generation"])
        journals = self._journals()
        for gen in sorted((k for k in journals if k >= g), reverse=True):
            for i, row in self._records(journals[gen]):
                self.mm[i] = np.frombuffer(row, dtype=self.layout.dtype).reshape(self.mm.shape[1:])
        self.mm.flush()
        for gen, p in journals.items():
            if gen > g:
                p.unlink()
        crc = self.checksum()
        if crc != int(state["crc32"]):
            raise UserError(f"{self.path}: ensemble file does not match the checkpoint (crc32 {crc:08x} "
                            f"vs {int(state['crc32']):08x}); it was changed outside this run")
        self.generation = g
        self.journaled = {i for i, _ in self._records(journals[g])} if g in journals else set()
        self._ready = True

    # -- the ensemble ------------------------------------------------------------------------------
    def _old_weight(self, count: torch.Tensor) -> torch.Tensor:
        """Weight of the stored bias-corrected mean when one more visit arrives (0 on the first):
        a (1 - a^n) / (1 - a^(n+1)) for n visits so far, from a table (counts are small integers)."""
        return self.weights[count.long()]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, probs: torch.Tensor, geometry: dict[str, torch.Tensor]
               ) -> int:
        """Fold softmax ``probs`` [B, C, oh, ow] of (possibly cropped/scaled/flipped) target images
        into their records. Returns the number of grid cells updated."""
        self._ensure_ready()
        probs = probs.detach().float().cpu()
        indices = [int(i) for i in indices]
        self._journal_rows(indices)
        touched = 0
        for b, i in enumerate(indices):
            hf, wf, top, left, ch, cw, flip = _geometry(geometry, b)
            p = probs[b].flip(-1) if flip else probs[b]  # back to the un-flipped crop
            oh, ow = p.shape[-2:]
            y0, y1, yn, iy = _axis(hf, top, min(ch, hf - top), ch, oh, self.layout.grid[0])
            x0, x1, xn, ix = _axis(wf, left, min(cw, wf - left), cw, ow, self.layout.grid[1])
            if y1 == y0 or x1 == x0:
                continue
            if iy is not None and ix is not None:
                p = p[:, iy][:, :, ix]
            else:
                gy, gx = torch.meshgrid(yn, xn, indexing="ij")
                grid = torch.stack((gx, gy), -1)[None]
                p = F.grid_sample(p[None], grid, mode="bilinear", padding_mode="border",
                                  align_corners=False)[0]  # [C, y1-y0, x1-x0]
            old = torch.from_numpy(np.array(self.mm[i, :, y0:y1, x0:x1]))
            self.mm[i, :, y0:y1, x0:x1] = self._fold(old, p).numpy()
            touched += (y1 - y0) * (x1 - x0)
        return touched

    def _fold(self, old: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        count = old[-1].float()
        w_old = self._old_weight(count)
        new_count = (count + 1).clamp(max=self.cap)
        if self.layout.mode == "probs_fp16":
            out = torch.empty_like(old)
            out[:-1] = torch.lerp(p, old[:-1].float(), w_old)  # w_old E + (1 - w_old) p
            out[-1] = new_count
            return out
        cls_old, q_old = old[0].long(), old[1].float() / 255.0
        s_old = w_old * q_old + (1 - w_old) * p.gather(0, cls_old[None])[0]
        p_top, cls_top = p.max(0)
        s_top = torch.where(cls_top == cls_old, s_old, (1 - w_old) * p_top)
        keep = s_old >= s_top
        cls = torch.where(keep, cls_old, cls_top)
        conf = torch.where(keep, s_old, s_top)
        return torch.stack((cls.float(), (conf * 255).round().clamp(0, 255), new_count)).to(torch.uint8)

    @torch.no_grad()
    def lookup(self, indices: torch.Tensor, geometry: dict[str, torch.Tensor], out_hw: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ensemble class and confidence at each logit cell of the (augmented) crops, and whether
        the cell has a label at all (inside the image and visited at least once). [B, oh, ow]."""
        self._ensure_ready()
        oh, ow = out_hw
        B = len(indices)
        cls = torch.zeros(B, oh, ow, dtype=torch.long)
        conf = torch.zeros(B, oh, ow)
        valid = torch.zeros(B, oh, ow, dtype=torch.bool)
        for b, i in enumerate(int(v) for v in indices):
            hf, wf, top, left, ch, cw, flip = _geometry(geometry, b)
            iy, my = _lookup_axis(hf, top, min(ch, hf - top), ch, oh, self.layout.grid[0])
            ix, mx = _lookup_axis(wf, left, min(cw, wf - left), cw, ow, self.layout.grid[1])
            y0, y1, x0, x1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
            rec = torch.from_numpy(np.array(self.mm[i, :, y0:y1, x0:x1]))
            rec = rec[:, iy - y0][:, :, ix - x0]  # [P, oh, ow] nearest grid cell
            if self.layout.mode == "probs_fp16":
                c_conf, c_cls = rec[:-1].float().max(0)
            else:
                c_cls, c_conf = rec[0].long(), rec[1].float() / 255.0
            ok = (rec[-1] > 0) & my[:, None] & mx[None, :]
            if flip:
                c_cls, c_conf, ok = c_cls.flip(-1), c_conf.flip(-1), ok.flip(-1)
            cls[b], conf[b], valid[b] = c_cls, c_conf, ok
        return cls, conf, valid

    def close(self) -> None:
        self.mm.flush()
        del self.mm
