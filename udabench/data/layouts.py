"""The official on-disk layouts of GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes (protocol.md 2-4).

Scanning pairs every image with its label by file name; checking a root turns a missing, misnamed
or empty folder into ONE DataError that shows the expected tree and where the data comes from.
udabench never downloads datasets.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from udabench.errors import DataError

KINDS = ("gta5", "synthia", "cityscapes")
# Where each dataset lives below the data root unless told otherwise.
DEFAULT_SUBDIR = {"gta5": "gta5", "synthia": "synthia", "cityscapes": "cityscapes"}


@dataclass(frozen=True)
class Layout:
    kind: str
    title: str
    url: str
    tree: str  # the expected tree, '{root}' is substituted
    nominal_size: tuple[int, int] | None  # (W, H) of the real dataset, for the verify report
    label_encoding: str  # what the label PNGs must be
    max_label_value: int  # largest valid raw label value (255 = ignore is also accepted for ids)


LAYOUTS: dict[str, Layout] = {
    "gta5": Layout(
        "gta5", "GTA5", "https://download.visinf.tu-darmstadt.de/data/from_games/",
        "{root}/images/00001.png ... and {root}/labels/00001.png ... (8-bit palette labels)",
        (1914, 1052), "8-bit palette (indices = Cityscapes labelIds)", 33,
    ),
    "synthia": Layout(
        "synthia", "SYNTHIA-RAND-CITYSCAPES", "https://synthia-dataset.net (SYNTHIA-RAND-CITYSCAPES)",
        "{root}/RGB/0000000.png ... and {root}/GT/LABELS/0000000.png ... (16-bit 3-channel labels)",
        (1280, 760), "16-bit 3-channel (class id in the red channel)", 22,
    ),
    "cityscapes": Layout(
        "cityscapes", "Cityscapes", "https://www.cityscapes-dataset.com (account required)",
        "{root}/leftImg8bit/{{train,val}}/<city>/<stem>_leftImg8bit.png and "
        "{root}/gtFine/{{train,val}}/<city>/<stem>_gtFine_labelIds.png",
        (2048, 1024), "8-bit labelIds", 33,
    ),
}

_CS_IMAGE_SUFFIX = "_leftImg8bit.png"
_CS_LABEL_SUFFIX = "_gtFine_labelIds.png"


@dataclass(frozen=True)
class Pair:
    id: str
    image: Path
    label: Path | None  # None for label-free views (target train) and for images missing a label


@dataclass
class Scan:
    """Result of pairing a dataset's files; problems are kept, not raised."""

    kind: str
    root: Path
    split: str
    pairs: list[Pair] = field(default_factory=list)  # images that have a label (or no label wanted)
    unlabelled: list[Pair] = field(default_factory=list)  # images whose label (.label) is absent
    orphan_labels: list[Path] = field(default_factory=list)  # labels whose image is absent

    @property
    def missing_labels(self) -> list[Path]:
        return [p.label for p in self.unlabelled]  # type: ignore[misc]


def layout(kind: str) -> Layout:
    if kind not in LAYOUTS:
        raise DataError(f"unknown dataset '{kind}'; expected one of: {', '.join(KINDS)}")
    return LAYOUTS[kind]


def where_to_get(kind: str, root: Path) -> str:
    lay = layout(kind)
    return (f"expected {lay.tree.format(root=root)}; get {lay.title} from {lay.url} "
            f"(udabench never downloads datasets)")


def _subdir(root: Path, rel: str, kind: str) -> Path:
    """root/rel, or a DataError that names what is there instead (wrong folder names)."""
    path = root / rel
    if path.is_dir():
        return path
    parent = path.parent
    found = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    lowered = {name.lower(): name for name in found}  # 'Images' or 'labels' vs 'LABELS'
    close = difflib.get_close_matches(path.name.lower(), list(lowered), n=1, cutoff=0.5)
    hint = f" (found '{lowered[close[0]]}': rename it to '{path.name}')" if close else ""
    there = f"{parent} contains: {', '.join(found) or 'no folders'}" if parent.is_dir() else ""
    raise DataError(
        f"{layout(kind).title} folder {path} not found{hint}; {there + '; ' if there else ''}"
        f"{where_to_get(kind, root)}"
    )


def _pngs(folder: Path) -> dict[str, Path]:
    with os.scandir(folder) as it:
        return {e.name[:-4]: Path(e.path) for e in it if e.name.endswith(".png") and e.is_file()}


def _empty(kind: str, folder: Path, root: Path) -> DataError:
    return DataError(f"no PNG files in {folder}; {where_to_get(kind, root)}")


def check_root(kind: str, root: Path) -> None:
    """Raise one DataError if the dataset root is missing (with the expected tree and source)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{layout(kind).title} not found at {root}; {where_to_get(kind, root)}")


def scan(kind: str, root: Path, split: str = "train", with_labels: bool = True) -> Scan:
    """Pair images and labels of one split in the official layout; raise on missing/empty folders."""
    root = Path(root)
    check_root(kind, root)
    result = Scan(kind, root, split)
    if kind == "cityscapes":
        if split not in ("train", "val"):
            raise DataError(f"unknown Cityscapes split '{split}'; expected train or val")
        images = _cityscapes_files(_subdir(root, f"leftImg8bit/{split}", kind), _CS_IMAGE_SUFFIX)
        if not images:
            raise _empty(kind, root / "leftImg8bit" / split, root)
        labels = (_cityscapes_files(_subdir(root, f"gtFine/{split}", kind), _CS_LABEL_SUFFIX)
                  if with_labels else {})
        if with_labels and not labels:
            raise _empty(kind, root / "gtFine" / split, root)

        def expected(stem: str) -> Path:
            return root / "gtFine" / split / stem.split("_")[0] / f"{stem}{_CS_LABEL_SUFFIX}"
    else:
        image_rel, label_rel = ("images", "labels") if kind == "gta5" else ("RGB", "GT/LABELS")
        image_dir = _subdir(root, image_rel, kind)
        label_dir = _subdir(root, label_rel, kind) if with_labels else None
        images = _pngs(image_dir)
        if not images:
            raise _empty(kind, image_dir, root)
        labels = _pngs(label_dir) if label_dir is not None else {}
        if label_dir is not None and not labels:
            raise _empty(kind, label_dir, root)

        def expected(stem: str) -> Path:
            return root / label_rel / f"{stem}.png"

    for stem in sorted(images):
        if not with_labels:
            result.pairs.append(Pair(stem, images[stem], None))
        elif stem in labels:
            result.pairs.append(Pair(stem, images[stem], labels[stem]))
        else:
            result.unlabelled.append(Pair(stem, images[stem], expected(stem)))
    result.orphan_labels = [labels[s] for s in sorted(set(labels) - set(images))]
    return result


def _cityscapes_files(split_dir: Path, suffix: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for city in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        with os.scandir(city) as it:
            for e in it:
                if e.name.endswith(suffix) and e.is_file():
                    out[e.name[: -len(suffix)]] = Path(e.path)
    return out


def require_complete(scan_result: Scan) -> None:
    """Raise if some image has no label (the loader cannot train on it)."""
    missing = scan_result.missing_labels
    if missing:
        first = ", ".join(str(p) for p in missing[:3])
        raise DataError(
            f"{len(missing)} {layout(scan_result.kind).title} images have no label (missing: {first}"
            f"{', ...' if len(missing) > 3 else ''}); restore them, or run "
            f"`udabench data prepare {scan_result.kind}` to record and skip them"
        )
