"""`udabench data verify`: counts, sizes, encodings, value ranges, missing and mismatched pairs.

Errors (missing labels, corrupt files, wrong encodings, out-of-range values) fail the check with
one line naming the first ten paths and the count; warnings (image/label size mismatch, which the
loader and prepare repair with nearest-neighbour resizing; labels without an image) are reported.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torchvision.io import ImageReadMode

from udabench.data import layouts
from udabench.data.registry import get_dataset
from udabench.data.spec import DatasetSpec, LabelEncodingError, LabelRangeError
from udabench.data.layouts import Pair
from udabench.data.pngio import CorruptPNGError, PngInfo, check_png, read_png, read_png_info
from udabench.errors import DataError

T = TypeVar("T")
R = TypeVar("R")

# problem categories -> severity
ERRORS = ("missing label", "corrupt", "wrong encoding", "out of range")
WARNINGS = ("size mismatch", "orphan label")


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
    image_size: tuple[int, int] | None = None  # (W, H)
    label_size: tuple[int, int] | None = None
    label_encoding: str | None = None
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
        raise CorruptPNGError(f"cannot read {path}: {exc.strerror}") from None


def check_pair(kind: str, pair: Pair, quick: bool = False) -> PairCheck:
    """Headers always; with ``quick=False`` also CRCs, compressed data and label values."""
    out = PairCheck(pair.id)
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
        wrong = expected_label_encoding(kind, info)
        if wrong:
            out.problems.append(Problem("wrong encoding", pair.label, wrong))
        elif not quick:
            get_dataset(kind).label_ids(read_png(pair.label, ImageReadMode.UNCHANGED), pair.label)
    except CorruptPNGError as exc:
        out.problems.append(Problem("corrupt", pair.label, str(exc)))
    except LabelEncodingError as exc:
        out.problems.append(Problem("wrong encoding", pair.label, str(exc)))
    except LabelRangeError as exc:
        out.problems.append(Problem("out of range", pair.label, str(exc)))
    if out.image_size and out.label_size and out.image_size != out.label_size:
        out.problems.append(Problem("size mismatch", pair.label,
                                    f"label {out.label_size} vs image {out.image_size}"))
    return out


def progress_bar(console: Console | None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, disable=console is None,
                    transient=False)


def parallel_map(fn: Callable[..., R], items: Iterable[T], workers: int,
                 on_done: Callable[[R], None], *args: Any) -> None:
    """Run ``fn(item, *args)`` over items (in a process pool when workers > 1), in order."""
    items = list(items)
    if workers <= 1:
        for item in items:
            on_done(fn(item, *args))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, item, *args) for item in items]
        for fut in futures:
            on_done(fut.result())


def _check_chunk(pairs: list[Pair], kind: str, quick: bool) -> list[PairCheck]:
    return [check_pair(kind, p, quick) for p in pairs]


@dataclass
class VerifyReport:
    kind: str
    root: Path
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> counts
    image_sizes: Counter = field(default_factory=Counter)
    label_encodings: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    def by_category(self, category: str) -> list[Problem]:
        return [p for p in self.problems if p.category == category]

    def table(self) -> Table:
        title = layouts.layout(self.kind).title
        table = Table(title=f"udabench data verify: {title} at {self.root}", title_justify="left")
        table.add_column("check")
        table.add_column("status")
        table.add_column("details", overflow="fold")
        for split, c in self.splits.items():
            table.add_row(f"{split}: files", "[green]OK",
                          f"{c['images']} images, {c['labels']} labels, {c['pairs']} pairs")
        nominal = layouts.layout(self.kind).nominal_size
        sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in self.image_sizes.most_common(4))
        more = len(self.image_sizes) - 4
        sizes += f" (+{more} other sizes)" if more > 0 else ""
        sizes += f"; nominal {nominal[0]}x{nominal[1]}" if nominal else ""
        table.add_row("image sizes", "[green]OK", sizes)
        encs = ", ".join(f"{e}: {n}" for e, n in self.label_encodings.most_common())
        table.add_row("label encoding", "[green]OK", f"{encs}; expected "
                      f"{layouts.layout(self.kind).label_encoding}")
        for category in ERRORS + WARNINGS:
            found = self.by_category(category)
            status = ("[green]OK" if not found else "[red]FAIL" if category in ERRORS
                      else "[yellow]WARN")
            detail = "; ".join(str(p.path) for p in found[:10])
            if len(found) > 10:
                detail += f"; ... ({len(found)} in all)"
            if category == "size mismatch" and found:
                detail += " (prepare resizes these labels with nearest neighbour, or drops them)"
            table.add_row(category, status, f"{len(found)}" + (f": {detail}" if found else ""))
        return table

    def raise_if_failed(self) -> None:
        errors = self.errors
        if errors:
            listed = "; ".join(f"{p.category}: {p.path}" for p in errors[:10])
            raise DataError(f"{layouts.layout(self.kind).title} at {self.root} failed verification, "
                            f"{len(errors)} problem(s) (first {min(10, len(errors))}): {listed}")


def verify_dataset(kind: str, root: Path, quick: bool = False, workers: int = 1,
                   console: Console | None = None) -> VerifyReport:
    """Check every file of a dataset; returns the report (call ``raise_if_failed`` to fail)."""
    root = Path(root)
    layouts.check_root(kind, root)
    report = VerifyReport(kind, root)
    spec = get_dataset(kind)
    scans = [layouts.scan(spec, root, split, with_labels=True) for split in spec.splits]
    for s in scans:
        report.splits[s.split] = {"images": len(s.pairs) + len(s.missing_labels),
                                  "labels": len(s.pairs) + len(s.orphan_labels), "pairs": len(s.pairs)}
        report.problems += [Problem("missing label", p) for p in s.missing_labels]
        report.problems += [Problem("orphan label", p) for p in s.orphan_labels]
    pairs = [p for s in scans for p in s.pairs]
    chunks = [pairs[i: i + 64] for i in range(0, len(pairs), 64)]
    with progress_bar(console) as bar:
        task = bar.add_task(f"verifying {layouts.layout(kind).title}", total=len(pairs))

        def done(results: list[PairCheck]) -> None:
            for r in results:
                if r.image_size:
                    report.image_sizes[r.image_size] += 1
                if r.label_encoding:
                    report.label_encodings[r.label_encoding] += 1
                report.problems += r.problems
            bar.advance(task, len(results))

        parallel_map(_check_chunk, chunks, workers, done, kind, quick)
    return report


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
