"""Dataset descriptors: everything udabench needs to know about one dataset, in one object.

A descriptor says where the files are (a ``FilePattern`` for images and one for labels), which
splits exist (and which of them are scored, and which is the target's unlabelled training split),
how a label PNG becomes the 19 trainIds (encoding check, id channel, lookup table, what ids outside
the table mean), where the data comes from, and where a prediction for an image is written.
Datasets, ``data verify``, ``data prepare``, ``score`` and ``predict`` ask the descriptor; none of
them names a dataset. The built-in descriptors are ``gta5_dataset.py``, ``synthia_dataset.py`` and
``cityscapes_dataset.py``; a new dataset is one such file plus ``@register_dataset``
(docs/datasets.md has a worked example).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:  # torch loads only when a label is decoded (listing commands stay light)
    import torch

    from udabench.data.pngio import PngInfo
from udabench.errors import DataError
from udabench.taxonomy import IGNORE, NUM_CLASSES


class LabelEncodingError(DataError):
    """A label PNG in the wrong encoding (expanded palette, 8-bit SYNTHIA, colour labels...)."""


class LabelRangeError(DataError):
    """A label holding values outside the dataset's id range."""


def lookup_table(pairs: dict[int, int], size: int = 256) -> np.ndarray:
    """A read-only uint8 table raw id -> trainId of ``size`` entries; unlisted ids map to 255."""
    table = np.full(size, IGNORE, dtype=np.uint8)
    for raw, train_id in pairs.items():
        table[raw] = train_id
    table.setflags(write=False)
    return table


@dataclass(frozen=True)
class FilePattern:
    """Where one kind of file lives below a dataset root.

    ``leftImg8bit/{split}/*/{id}_leftImg8bit.png``: '/'-separated folder names, ``{split}`` (the
    split's name), ``*`` (any one folder, e.g. a city, whose name is kept for predictions), then the
    file name ``<prefix>{id}<suffix>``; the suffix ends in ``.png`` (matched in any letter case).
    """

    pattern: str

    def __post_init__(self) -> None:
        parts = self.pattern.split("/")
        name = parts[-1]
        if name.count("{id}") != 1 or any("{id}" in p for p in parts[:-1]):
            raise ValueError(f"file pattern '{self.pattern}': the file name needs one '{{id}}'")
        if not name.lower().endswith(".png"):
            raise ValueError(f"file pattern '{self.pattern}' must end in .png (udabench reads PNG)")
        if any(not p or p in (".", "..") for p in parts):
            raise ValueError(f"file pattern '{self.pattern}' has an empty or relative component")

    @property
    def folders(self) -> tuple[str, ...]:
        return tuple(self.pattern.split("/")[:-1])

    @property
    def prefix(self) -> str:
        return self.pattern.split("/")[-1].split("{id}")[0]

    @property
    def suffix(self) -> str:
        return self.pattern.split("/")[-1].split("{id}")[1]

    @property
    def wildcards(self) -> int:
        return sum(1 for f in self.folders if f == "*")

    def path(self, root: Path, split: str, id: str, groups: tuple[str, ...] = ()) -> Path:
        """The file of ``id``; ``groups`` fill the ``*`` folders in order (``*`` when unknown)."""
        out, filled = Path(root), iter(groups)
        for folder in self.folders:
            out = out / (split if folder == "{split}" else next(filled, "*") if folder == "*"
                         else folder)
        return out / f"{self.prefix}{id}{self.suffix}"

    def groups_of(self, relative: Path | str) -> tuple[str, ...]:
        """The ``*`` folder names of a file given relative to the root (its city)."""
        parts = Path(relative).parts[:-1]
        return tuple(p for p, f in zip(parts, self.folders) if f == "*")

    def show(self, splits: str, id: str, wildcard_names: tuple[str, ...]) -> str:
        """The pattern for messages, e.g. ``leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png``."""
        names, parts = iter(wildcard_names), []
        for folder in self.folders:
            parts.append(splits if folder == "{split}" else next(names, "<folder>") if folder == "*"
                         else folder)
        return "/".join(parts + [f"{self.prefix}{id}{self.suffix}"])


class DatasetSpec:
    """Base class of dataset descriptors: class attributes describe the dataset, and methods that
    a dataset with unusual label files may override (``label_ids``, ``label_warnings``...)."""

    # -- identity and where to get it -------------------------------------------------------------
    name: ClassVar[str] = ""  # registry name; also the default folder below the data root
    title: ClassVar[str] = ""  # for messages, e.g. "SYNTHIA-RAND-CITYSCAPES"
    url: ClassVar[str] = ""  # where to get it (udabench never downloads datasets)
    folder: ClassVar[str] = ""  # folder below the data root when not ``name``
    nominal_size: ClassVar[tuple[int, int] | None] = None  # (W, H) of the real images (reports)
    # -- layout -------------------------------------------------------------------------------------
    images: ClassVar[FilePattern]
    labels: ClassVar[FilePattern]
    splits: ClassVar[tuple[str, ...]] = ("train",)
    # Scored splits: labels keep their own size (logits are upsampled to it) and are never dropped.
    eval_splits: ClassVar[tuple[str, ...]] = ()
    # The target's training split: served without labels and never summarised (target firewall).
    unlabelled_splits: ClassVar[tuple[str, ...]] = ()
    example_id: ClassVar[str] = "00001"  # shown in the expected tree
    wildcard_names: ClassVar[tuple[str, ...]] = ()  # how ``*`` folders are shown, e.g. ("<city>",)
    # -- labels -------------------------------------------------------------------------------------
    label_encoding: ClassVar[str] = "8-bit single-channel ids"  # what label PNGs must be
    label_channels: ClassVar[int] = 1
    label_bit_depth: ClassVar[int] = 8
    id_channel: ClassVar[int] = 0  # the channel holding the class id
    lut: ClassVar[np.ndarray]  # raw id -> trainId (uint8, 255 = ignore) for every possible value
    max_label_value: ClassVar[int]  # the largest id of the dataset's own table
    # Values above max_label_value: "error" (a broken file; 255 is still read as ignore) or
    # "ignore" (mapped to 255 and counted by `data verify`).
    unknown_ids: ClassVar[str] = "error"

    # -- identity -------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.name

    @property
    def subdir(self) -> str:
        return self.folder or self.name

    def description(self) -> str:
        return (type(self).__doc__ or self.title).strip().splitlines()[0]

    def tree(self, root: Path) -> str:
        splits = self.splits[0] if len(self.splits) == 1 else "{" + ",".join(self.splits) + "}"
        show = [p.show(splits, self.example_id, self.wildcard_names)
                for p in (self.images, self.labels)]
        return f"{root}/{show[0]} ... and {root}/{show[1]} ... (labels: {self.label_encoding})"

    def where_to_get(self, root: Path) -> str:
        return (f"expected {self.tree(root)}; get {self.title} from {self.url} "
                f"(udabench never downloads datasets)")

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(f"unknown {self.title} split '{split}'; expected "
                            f"{' or '.join(self.splits)}")

    def labelled_by_default(self, split: str) -> bool:
        return split not in self.unlabelled_splits

    # -- labels ---------------------------------------------------------------------------------------
    def check_label_header(self, info: PngInfo) -> str | None:
        """None when a label's PNG header fits the encoding, else why not (verify --quick).

        Fewer bits than 8 (a 4-bit palette written by Pillow) decode to the same ids."""
        depth_ok = info.bit_depth == self.label_bit_depth or (
            self.label_bit_depth == 8 and info.bit_depth < 8)
        if info.channels == self.label_channels and depth_ok:
            return None
        return f"{info.describe()}: expected {self.label_encoding}"

    def encoding_message(self, path: Path, found: str) -> str:
        return (f"{self.title} label {path} is {found}; expected {self.label_encoding}; "
                f"re-extract the original files")

    def label_ids(self, raw: torch.Tensor, path: Path) -> torch.Tensor:
        """The [H, W] id plane of a decoded label PNG (int32 for 16-bit files, else uint8).

        Raises LabelEncodingError on the wrong encoding and, for ``unknown_ids = "error"``,
        LabelRangeError on values outside 0..max_label_value (255 is ignore).
        """
        import torch
        channels, dtype = raw.shape[0], raw.dtype
        depth = 16 if dtype == torch.uint16 else 8
        if channels != self.label_channels or depth != self.label_bit_depth:
            raise LabelEncodingError(self.encoding_message(path, f"{channels}-channel {depth}-bit"))
        ids = raw[self.id_channel]
        ids = ids.to(torch.int32) if dtype == torch.uint16 else ids  # uint16 supports few torch ops
        if self.unknown_ids == "error" and int(ids.max()) > self.max_label_value:
            bad = (ids > self.max_label_value) & (ids != IGNORE)
            if bool(bad.any()):
                values = torch.unique(ids[bad])[:5].tolist()
                raise LabelRangeError(
                    f"{self.title} label {path} holds values {values} outside "
                    f"0..{self.max_label_value} (and {IGNORE}); the file is not a valid "
                    f"{self.label_encoding} label")
        return ids

    def unknown_id_pixels(self, ids: torch.Tensor) -> int:
        """Pixels whose id is not in the dataset's table (only "ignore" datasets keep them)."""
        if self.unknown_ids != "ignore":
            return 0
        return int((ids > self.max_label_value).sum())

    def map_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Raw ids -> uint8 trainIds; numpy's take is several times faster than torch indexing."""
        import torch
        if ids.device.type != "cpu":
            return torch.from_numpy(self.lut.copy()).to(ids.device)[ids.long()]
        return torch.from_numpy(np.take(self.lut, ids.numpy()))

    def decode_label(self, path: Path, strict: bool = False) -> torch.Tensor:
        """A label file as uint8 trainIds [H, W] (255 = ignore)."""
        from udabench.data.pngio import read_png
        return self.map_ids(self.label_ids(read_png(path, strict=strict), path))

    def label_warnings(self, raw: torch.Tensor, ids: torch.Tensor, path: Path) -> list[str]:
        """Signs that a label that decodes fine holds the wrong thing (verify's warnings)."""
        return []

    @cached_property
    def export_lut(self) -> np.ndarray:
        """trainId -> raw id, for predictions in the dataset's own encoding (ignore -> the first
        raw id that means "no class")."""
        lut = self.lut[: min(len(self.lut), 256)]
        void = np.nonzero(lut == IGNORE)[0]
        out = np.full(256, int(void[0]) if void.size else IGNORE, dtype=np.uint8)
        for train_id in range(NUM_CLASSES):
            raw = np.nonzero(lut == train_id)[0]
            if raw.size:
                out[train_id] = raw[0]
        out.setflags(write=False)
        return out

    # -- files ----------------------------------------------------------------------------------------
    def ground_truth(self, root: Path, split: str) -> dict[str, Path]:
        """id -> label file of ``split`` (labels only: scoring needs no images)."""
        from udabench.data import layouts

        return layouts.label_files(self, Path(root), split)

    def prediction_path(self, id: str, groups: tuple[str, ...] = ()) -> Path:
        """Where a prediction for ``id`` goes below an output folder: the ``*`` folders of its
        files (a Cityscapes city), then ``<id>.png``."""
        return Path(*groups, f"{id}.png")

    def __repr__(self) -> str:
        return f"<dataset {self.name}: {self.title}>"

    def __reduce__(self):  # pickled by class (the registry holds one instance per class)
        return (type(self), ())


def validate_spec(cls: type) -> None:
    """Refuse a descriptor class that cannot work, when it is registered (for plug-in authors)."""
    where = f"dataset descriptor {cls.__module__}.{cls.__qualname__}"
    if not (isinstance(cls, type) and issubclass(cls, DatasetSpec)):
        raise TypeError(f"{where} must subclass udabench.data.spec.DatasetSpec")
    if not cls.name or not cls.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{where}: name '{cls.name}' must be letters, digits, '-' or '_'")
    for attr in ("images", "labels"):
        if not isinstance(getattr(cls, attr, None), FilePattern):
            raise TypeError(f"{where}: {attr} must be a FilePattern")
    lut = getattr(cls, "lut", None)
    if not isinstance(lut, np.ndarray) or lut.dtype != np.uint8 or lut.ndim != 1:
        raise TypeError(f"{where}: lut must be a 1-D uint8 numpy array (see lookup_table)")
    if len(lut) < 2 ** cls.label_bit_depth:
        raise ValueError(f"{where}: lut has {len(lut)} entries; a {cls.label_bit_depth}-bit label "
                         f"needs {2 ** cls.label_bit_depth}")
    if not ((lut < NUM_CLASSES) | (lut == IGNORE)).all():
        raise ValueError(f"{where}: lut values must be trainIds 0..{NUM_CLASSES - 1} or {IGNORE}")
    if not 0 <= getattr(cls, "max_label_value", -1) < len(lut):
        raise ValueError(f"{where}: max_label_value must be set and index the lut")
    if cls.unknown_ids not in ("error", "ignore"):
        raise ValueError(f"{where}: unknown_ids must be 'error' or 'ignore'")
    if cls.label_bit_depth not in (8, 16) or not 0 <= cls.id_channel < cls.label_channels:
        raise ValueError(f"{where}: label_bit_depth must be 8 or 16 and id_channel < label_channels")
    extra = set(cls.eval_splits + cls.unlabelled_splits) - set(cls.splits)
    if not cls.splits or extra:
        raise ValueError(f"{where}: eval_splits/unlabelled_splits {sorted(extra)} not in splits")
