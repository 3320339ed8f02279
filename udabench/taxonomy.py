"""The one label space of udabench: the 19 Cityscapes trainIds, 255 = ignore.

Constants follow docs/protocol.md sections 1, 3 and 7 (and the official
``cityscapesscripts.helpers.labels``, checked by a test when that package is installed).
All lookup tables are 1-D uint8 numpy arrays indexed by the source id; unknown ids map to 255.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = 255
NUM_CLASSES = 19


@dataclass(frozen=True)
class ClassInfo:
    train_id: int
    name: str
    label_id: int  # Cityscapes labelId (also the GTA5 palette index)
    color: tuple[int, int, int]


CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "road", 7, (128, 64, 128)),
    ClassInfo(1, "sidewalk", 8, (244, 35, 232)),
    ClassInfo(2, "building", 11, (70, 70, 70)),
    ClassInfo(3, "wall", 12, (102, 102, 156)),
    ClassInfo(4, "fence", 13, (190, 153, 153)),
    ClassInfo(5, "pole", 17, (153, 153, 153)),
    ClassInfo(6, "traffic light", 19, (250, 170, 30)),
    ClassInfo(7, "traffic sign", 20, (220, 220, 0)),
    ClassInfo(8, "vegetation", 21, (107, 142, 35)),
    ClassInfo(9, "terrain", 22, (152, 251, 152)),
    ClassInfo(10, "sky", 23, (70, 130, 180)),
    ClassInfo(11, "person", 24, (220, 20, 60)),
    ClassInfo(12, "rider", 25, (255, 0, 0)),
    ClassInfo(13, "car", 26, (0, 0, 142)),
    ClassInfo(14, "truck", 27, (0, 0, 70)),
    ClassInfo(15, "bus", 28, (0, 60, 100)),
    ClassInfo(16, "train", 31, (0, 80, 100)),
    ClassInfo(17, "motorcycle", 32, (0, 0, 230)),
    ClassInfo(18, "bicycle", 33, (119, 11, 32)),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
TRAIN_ID_BY_NAME: dict[str, int] = {c.name: c.train_id for c in CLASSES}

# Subsets by name (docs/protocol.md section 1); trainIds derived from the names so the two cannot drift.
_NOT_IN_16 = ("terrain", "truck", "train")
_NOT_IN_13 = _NOT_IN_16 + ("wall", "fence", "pole")
SUBSET_NAMES: dict[str, tuple[str, ...]] = {
    "19": CLASS_NAMES,
    "16": tuple(n for n in CLASS_NAMES if n not in _NOT_IN_16),
    "13": tuple(n for n in CLASS_NAMES if n not in _NOT_IN_13),
}
SUBSETS: dict[str, tuple[int, ...]] = {
    k: tuple(TRAIN_ID_BY_NAME[n] for n in names) for k, names in SUBSET_NAMES.items()
}
# Classes whose ground truth convention B (CBST/ProDA line) ignores when scoring 16 classes.
CONVENTION_B_IGNORED: tuple[int, ...] = tuple(TRAIN_ID_BY_NAME[n] for n in _NOT_IN_16)

# Official colours of every Cityscapes labelId 0..33 (cityscapesscripts.helpers.labels): the GTA5
# palette, and how `data verify` recognises a renumbered palette. labelIds 0..4 are black.
LABEL_ID_COLORS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0), 1: (0, 0, 0), 2: (0, 0, 0), 3: (0, 0, 0), 4: (0, 0, 0), 5: (111, 74, 0),
    6: (81, 0, 81), 7: (128, 64, 128), 8: (244, 35, 232), 9: (250, 170, 160), 10: (230, 150, 140),
    11: (70, 70, 70), 12: (102, 102, 156), 13: (190, 153, 153), 14: (180, 165, 180),
    15: (150, 100, 100), 16: (150, 120, 90), 17: (153, 153, 153), 18: (153, 153, 153),
    19: (250, 170, 30), 20: (220, 220, 0), 21: (107, 142, 35), 22: (152, 251, 152),
    23: (70, 130, 180), 24: (220, 20, 60), 25: (255, 0, 0), 26: (0, 0, 142), 27: (0, 0, 70),
    28: (0, 60, 100), 29: (0, 0, 90), 30: (0, 0, 110), 31: (0, 80, 100), 32: (0, 0, 230),
    33: (119, 11, 32),
}

# SYNTHIA-RAND-CITYSCAPES class id -> trainId (docs/protocol.md section 3).
SYNTHIA_ID_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}
TRAIN_ID_TO_SYNTHIA_ID: dict[int, int] = {t: s for s, t in SYNTHIA_ID_TO_TRAIN_ID.items()}


def _lut(size: int, pairs: dict[int, int], fill: int = IGNORE) -> np.ndarray:
    table = np.full(size, fill, dtype=np.uint8)
    for src, dst in pairs.items():
        table[src] = dst
    table.setflags(write=False)
    return table


# Cityscapes labelId -> trainId; GTA5 palette indices are Cityscapes labelIds, so it is shared.
LABEL_ID_TO_TRAIN_ID: np.ndarray = _lut(256, {c.label_id: c.train_id for c in CLASSES})
GTA5_ID_TO_TRAIN_ID: np.ndarray = LABEL_ID_TO_TRAIN_ID
# SYNTHIA labels are uint16: a 65536-entry table covers every value the red channel can hold.
SYNTHIA_TO_TRAIN_ID: np.ndarray = _lut(65536, SYNTHIA_ID_TO_TRAIN_ID)
# trainId -> labelId for export to the official evaluator; ignore becomes 0 ("unlabeled").
TRAIN_ID_TO_LABEL_ID: np.ndarray = _lut(256, {c.train_id: c.label_id for c in CLASSES}, fill=0)
# Compact 16-way head (older SYNTHIA code, docs/protocol.md section 7) -> 19-space trainIds.
COMPACT16_TO_TRAIN_ID: np.ndarray = np.array(SUBSETS["16"], dtype=np.uint8)
COMPACT16_TO_TRAIN_ID.setflags(write=False)

# Official palette as a (256, 3) uint8 table indexed by trainId (ignore is black).
PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)
for _c in CLASSES:
    PALETTE[_c.train_id] = _c.color
PALETTE.setflags(write=False)


def subset_ids(subset: str) -> tuple[int, ...]:
    """trainIds of a named subset ('19', '16' or '13')."""
    try:
        return SUBSETS[subset]
    except KeyError:
        raise ValueError(f"unknown class subset '{subset}'; known: {', '.join(SUBSETS)}") from None


def color_to_train_id(rgb: np.ndarray) -> np.ndarray:
    """Map an HxWx3 uint8 image in the official palette to trainIds; unknown colours -> 255."""
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    out = np.full(key.shape, IGNORE, dtype=np.uint8)
    for c in CLASSES:
        r, g, b = c.color
        out[key == ((r << 16) | (g << 8) | b)] = c.train_id
    return out
