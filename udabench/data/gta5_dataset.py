"""GTA5 ("Playing for Data", Richter et al. 2016): game frames with 8-bit palette labels whose
palette indices are Cityscapes labelIds."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from udabench import taxonomy
from udabench.data.registry import register_dataset
from udabench.data.spec import DatasetSpec, FilePattern

if TYPE_CHECKING:
    import torch

# The official colours of the 19 classes by labelId: all different, so a palette entry drawn in
# one of them names the class its index should have been.
_CLASS_COLOURS = {c.color: c for c in taxonomy.CLASSES}


@register_dataset
class GTA5(DatasetSpec):
    """GTA5: 24,966 game frames, 8-bit palette labels (indices = Cityscapes labelIds)."""

    name = "gta5"
    title = "GTA5"
    url = "https://download.visinf.tu-darmstadt.de/data/from_games/"
    nominal_size = (1914, 1052)
    images = FilePattern("images/{id}.png")
    labels = FilePattern("labels/{id}.png")
    label_encoding = "8-bit palette (indices = Cityscapes labelIds)"
    lut = taxonomy.GTA5_ID_TO_TRAIN_ID
    max_label_value = 33

    def encoding_message(self, path: Path, found: str) -> str:
        return (f"GTA5 label {path} is {found}; expected an 8-bit palette PNG whose indices are "
                f"Cityscapes labelIds (as distributed); the file looks re-saved with its palette "
                f"expanded to colours; re-extract the original files")

    def label_warnings(self, raw: torch.Tensor, ids: torch.Tensor, path: Path) -> list[str]:
        """A palette that draws an index in another class's official colour: the indices were
        renumbered (an image editor re-indexing the palette), so they are not labelIds."""
        from udabench.data.pngio import read_palette
        palette = read_palette(path)
        if palette is None:
            return []
        present = np.nonzero(np.bincount(ids.reshape(-1).numpy(), minlength=256))[0]
        for index in present:
            if index >= len(palette):
                continue
            colour = tuple(int(v) for v in palette[index])
            cls = _CLASS_COLOURS.get(colour)
            if cls is not None and taxonomy.LABEL_ID_COLORS.get(int(index)) != colour:
                return [f"palette index {index} is drawn in the colour of '{cls.name}' (labelId "
                        f"{cls.label_id}): the indices are not labelIds (the palette was "
                        f"renumbered by an image tool); re-extract the original files"]
        return []
