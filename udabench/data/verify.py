"""`udabench data verify`: counts, sizes, encodings, value ranges, missing and mismatched pairs,
unusable files, and labels that decode but cannot be right.

Errors (missing labels, corrupt or unusable files, wrong encodings, out-of-range values) fail the
check with one line naming the first ten paths and the count. Warnings are reported: image/label
size mismatches (training labels are resized to their image; validation labels are scored at
their own size), labels without an image, labels with no valid pixel, ids outside the dataset's
table (read as ignore), labels the dataset's descriptor finds suspicious (a renumbered palette,
class ids in the wrong channel), and a split whose class distribution is implausible.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torchvision.io import ImageReadMode

from udabench.data import layouts
from udabench.data.layouts import Pair, shown
from udabench.data.parallel import default_workers, parallel_map, progress_bar  # noqa: F401
from udabench.data.pngio import CorruptPNGError, PngInfo, check_png, read_png, read_png_info
from udabench.data.registry import get_dataset
from udabench.data.spec import DatasetSpec, LabelEncodingError, LabelRangeError
from udabench.errors import DataError
from udabench.taxonomy import CLASS_NAMES, NUM_CLASSES

# problem categories -> severity
ERRORS = ("missing label", "corrupt", "unusable file", "wrong encoding", "out of range")
WARNINGS = ("size mismatch", "orphan label", "no valid pixel", "unknown ids", "suspicious label",
            "class distribution")
# A split is implausible when more of its label pixels than this are void, or one class covers
# more than this share of the labelled pixels (street scenes: void is a few percent, road ~35%).
VOID_SHARE_WARNING = 0.5
CLASS_SHARE_WARNING = 0.9


@dataclass
class Problem:
    category: str
    path: Path
    detail: str = ""

    @property
    def is_error(self) -> bool:
        return self.category in ERRORS


@dataclass
class PairCheck:
    id: str
    split: str = "train"
    image_size: tuple[int, int] | None = None  # (W, H)
    label_size: tuple[int, int] | None = None
    label_encoding: str | None = None
    class_pixels: list[int] | None = None  # pixels per trainId 0..18, then void (decoded labels)
    unknown_pixels: int = 0  # pixels whose id is outside the dataset's table (read as ignore)
    problems: list[Problem] = field(default_factory=list)


def expected_label_encoding(kind: str | DatasetSpec, info: PngInfo) -> str | None:
    """None when the header matches the dataset's label encoding, else why not.

    A grey 8-bit GTA5 label still holds the ids; the encoding row of the report shows it.
    """
    return get_dataset(kind).check_label_header(info)


def _inspect(path: Path, quick: bool) -> PngInfo:
    """Header only (quick), or every chunk's CRC plus the inflated data size."""
    try:
        if quick:
            return read_png_info(path)
        return check_png(path.read_bytes(), path, strict=True)
    except OSError as exc:
        raise CorruptPNGError(f"cannot read {shown(path)}: {exc.strerror or exc}") from None


def _decode(spec: DatasetSpec, out: PairCheck, path: Path) -> None:
    """Decode a label: class histogram, ids outside the table, the descriptor's warnings."""
    raw = read_png(path, ImageReadMode.UNCHANGED)
    ids = spec.label_ids(raw, path)
    counts = torch.bincount(spec.map_ids(ids).reshape(-1).long(), minlength=256)
    out.class_pixels = counts[:NUM_CLASSES].tolist() + [int(counts[NUM_CLASSES:].sum())]
    out.unknown_pixels = spec.unknown_id_pixels(ids)
    if out.unknown_pixels:
        out.problems.append(Problem("unknown ids", path, (
            f"{out.unknown_pixels} pixels ({100 * out.unknown_pixels / ids.numel():.1f}%) hold ids "
            f"above {spec.max_label_value}, read as ignore")))
    if not any(out.class_pixels[:NUM_CLASSES]):
        out.problems.append(Problem("no valid pixel", path, (
            "every pixel is void or ignored: the label teaches nothing, and a batch of such "
            "labels has no pixel to learn from")))
    out.problems += [Problem("suspicious label", path, w) for w in spec.label_warnings(raw, ids, path)]


def check_pair(kind: str | DatasetSpec, pair: Pair, quick: bool = False, split: str = "train"
               ) -> PairCheck:
    """Headers always; with ``quick=False`` also CRCs, compressed data and label values."""
    spec = get_dataset(kind)
    out = PairCheck(pair.id, split)
    try:
        info = _inspect(pair.image, quick)
        out.image_size = (info.width, info.height)
    except CorruptPNGError as exc:
        out.problems.append(Problem("corrupt", pair.image, str(exc)))
    if pair.label is None:
        return out
    try:
        info = _inspect(pair.label, quick)
        out.label_size = (info.width, info.height)
        out.label_encoding = info.describe()
        wrong = spec.check_label_header(info)
        if wrong:
            out.problems.append(Problem("wrong encoding", pair.label, wrong))
        elif not quick:
            _decode(spec, out, pair.label)
    except CorruptPNGError as exc:
        out.problems.append(Problem("corrupt", pair.label, str(exc)))
    except LabelEncodingError as exc:
        out.problems.append(Problem("wrong encoding", pair.label, str(exc)))
    except LabelRangeError as exc:
        out.problems.append(Problem("out of range", pair.label, str(exc)))
    except DataError as exc:  # unreadable
        out.problems.append(Problem("corrupt", pair.label, str(exc)))
    if out.image_size and out.label_size and out.image_size != out.label_size:
        sizes = f"label {out.label_size[0]}x{out.label_size[1]} vs image " \
                f"{out.image_size[0]}x{out.image_size[1]}"
        rule = ("scored at the label's own size: logits are upsampled to it and predictions must "
                "have it" if split in spec.eval_splits else
                "resized to the image with nearest neighbour for training (prepare --on-mismatch "
                "drop skips it instead)")
        out.problems.append(Problem("size mismatch", pair.label, f"{sizes}: {rule}"))
    return out


def _check_chunk(items: list[tuple[str, Pair]], kind: str | DatasetSpec, quick: bool
                 ) -> list[PairCheck]:
    return [check_pair(kind, pair, quick, split) for split, pair in items]


@dataclass
class VerifyReport:
    kind: str
    root: Path
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> counts
    image_sizes: Counter = field(default_factory=Counter)
    label_encodings: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    # split -> pixels per trainId 0..18, then void; only for decoded labels (not --quick)
    class_pixels: dict[str, np.ndarray] = field(default_factory=dict)
    unknown_pixels: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    def by_category(self, category: str) -> list[Problem]:
        return [p for p in self.problems if p.category == category]

    def add(self, result: PairCheck) -> None:
        if result.image_size:
            self.image_sizes[result.image_size] += 1
        if result.label_encoding:
            self.label_encodings[result.label_encoding] += 1
        if result.class_pixels is not None:
            hist = self.class_pixels.setdefault(result.split, np.zeros(NUM_CLASSES + 1, np.int64))
            hist += np.asarray(result.class_pixels, dtype=np.int64)
        self.unknown_pixels += result.unknown_pixels
        self.problems += result.problems

    def check_distribution(self) -> None:
        """Warn about splits whose labels, taken together, cannot be street scenes."""
        for split, hist in self.class_pixels.items():
            total, valid = int(hist.sum()), int(hist[:NUM_CLASSES].sum())
            if total and hist[NUM_CLASSES] > VOID_SHARE_WARNING * total:
                self.problems.append(Problem("class distribution", self.root, (
                    f"{split}: {100 * hist[NUM_CLASSES] / total:.0f}% of all label pixels are void "
                    f"or ignored (street scenes have a few percent): check the label encoding")))
            if valid and hist[:NUM_CLASSES].max() > CLASS_SHARE_WARNING * valid:
                top = int(hist[:NUM_CLASSES].argmax())
                self.problems.append(Problem("class distribution", self.root, (
                    f"{split}: '{CLASS_NAMES[top]}' covers "
                    f"{100 * hist[top] / valid:.0f}% of the labelled pixels: implausible for street "
                    f"scenes; check the label encoding")))

    def table(self) -> Table:
        spec = get_dataset(self.kind)
        table = Table(title=escape(f"udabench data verify: {spec.title} at {self.root}"),
                      title_justify="left")
        table.add_column("check")
        table.add_column("status")
        table.add_column("details", overflow="fold")
        for split, c in self.splits.items():
            table.add_row(f"{split}: files", "[green]OK",
                          f"{c['images']} images, {c['labels']} labels, {c['pairs']} pairs")
        nominal = spec.nominal_size
        sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in self.image_sizes.most_common(4))
        more = len(self.image_sizes) - 4
        sizes += f" (+{more} other sizes)" if more > 0 else ""
        sizes += f"; nominal {nominal[0]}x{nominal[1]}" if nominal else ""
        table.add_row("image sizes", "[green]OK", sizes)
        encs = ", ".join(f"{e}: {n}" for e, n in self.label_encodings.most_common())
        table.add_row("label encoding", "[green]OK", escape(f"{encs}; expected {spec.label_encoding}"))
        for split, hist in self.class_pixels.items():
            total, valid = max(1, int(hist.sum())), max(1, int(hist[:NUM_CLASSES].sum()))
            top = np.argsort(-hist[:NUM_CLASSES], kind="stable")[:3]
            common = ", ".join(f"{CLASS_NAMES[i]} {100 * hist[i] / valid:.0f}%" for i in top
                               if hist[i])
            table.add_row(f"{split}: classes", "[green]OK", f"void {100 * hist[-1] / total:.1f}%"
                          f" of label pixels; most labelled: {common or 'none'}")
        for category in ERRORS + WARNINGS:
            found = self.by_category(category)
            status = ("[green]OK" if not found else "[red]FAIL" if category in ERRORS
                      else "[yellow]WARN")
            detail = "; ".join(shown(p.path) + (f" ({p.detail})" if category in _DETAILED else "")
                               for p in found[:10])
            if len(found) > 10:
                detail += f"; ... ({len(found)} in all)"
            if category == "unknown ids" and found:
                detail = f"{self.unknown_pixels} pixels in all, read as ignore; {detail}"
            table.add_row(category, status, escape(f"{len(found)}" + (f": {detail}" if found else "")))
        return table

    def raise_if_failed(self) -> None:
        errors = self.errors
        if errors:
            listed = "; ".join(f"{p.category}: {shown(p.path)}" for p in errors[:10])
            raise DataError(f"{get_dataset(self.kind).title} at {self.root} failed verification, "
                            f"{len(errors)} problem(s) (first {min(10, len(errors))}): {listed}")


# Categories whose table row shows each file's detail (the others say it in their name).
_DETAILED = ("unusable file", "size mismatch", "unknown ids", "suspicious label",
             "class distribution")


def verify_dataset(kind: str | DatasetSpec, root: Path, quick: bool = False, workers: int = 1,
                   console: Console | None = None) -> VerifyReport:
    """Check every file of a dataset; returns the report (call ``raise_if_failed`` to fail)."""
    spec, root = get_dataset(kind), Path(root)
    layouts.check_root(spec, root)
    report = VerifyReport(spec.name, root)
    scans = [layouts.scan(spec, root, split, layouts.labels_expected(spec, root, split))
             for split in spec.splits]
    for s in scans:
        labelled = sum(p.label is not None for p in s.pairs)
        report.splits[s.split] = {"images": len(s.pairs) + len(s.missing_labels),
                                  "labels": labelled + len(s.orphan_labels), "pairs": len(s.pairs)}
        report.problems += [Problem("unusable file", p, why) for p, why in s.problems]
        report.problems += [Problem("missing label", p) for p in s.missing_labels]
        report.problems += [Problem("orphan label", p) for p in s.orphan_labels]
    items = [(s.split, p) for s in scans for p in s.pairs]
    chunks = [items[i: i + 64] for i in range(0, len(items), 64)]
    with progress_bar(console) as bar:
        task = bar.add_task(f"verifying {spec.title}", total=len(items))

        def done(results: list[PairCheck]) -> None:
            for r in results:
                report.add(r)
            bar.advance(task, len(results))

        parallel_map(_check_chunk, chunks, workers, done, spec, quick)
    report.check_distribution()
    return report
