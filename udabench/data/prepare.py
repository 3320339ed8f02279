"""`udabench data prepare`: one pass over a dataset that writes the manifest (pairs, sizes, defect
handling, per-class pixel counts) and optionally a resized cache at the training resolution.

Work is cut into chunks whose results are saved atomically under ``parts/<fingerprint>/``, so an
interrupted run resumes where it stopped; the fingerprint covers the file list and the options,
so a changed dataset or option starts afresh instead of mixing results.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from torchvision.io import ImageReadMode

from udabench.data import layouts
from udabench.data.registry import get_dataset
from udabench.data.spec import DatasetSpec, LabelEncodingError, LabelRangeError
from udabench.data.manifest import (CORRUPT, DROPPED, MISSING_LABEL, ORPHAN_LABEL, OK, OUT_OF_RANGE,
                                    RESIZED, USABLE, WRONG_ENCODING, Entry, Manifest, cache_dir,
                                    entry_from_dict, prepared_dir)
from udabench.data.pngio import CorruptPNGError, atomic_write_bytes, check_png, read_png, write_png
from udabench.data.transforms import resize_image, resize_label
from udabench.data.verify import parallel_map, progress_bar
from udabench.errors import DataError, UserError
from udabench.taxonomy import NUM_CLASSES


@dataclass(frozen=True)
class PrepareOptions:
    on_mismatch: Literal["resize", "drop"] = "resize"  # image/label size mismatch
    cache_size: tuple[int, int] | None = None  # (W, H) of the resized training cache; None = none
    interpolation: str = "bilinear"  # for cached images (labels always nearest)
    chunk_size: int = 64  # pairs per saved partial result
    workers: int = 1

    def __post_init__(self) -> None:
        if self.on_mismatch not in ("resize", "drop"):
            raise UserError(f"--on-mismatch must be resize or drop, got '{self.on_mismatch}'")
        if self.cache_size is not None and min(self.cache_size) < 1:
            raise UserError(f"cache size {self.cache_size} must be positive (W, H)")


@dataclass(frozen=True)
class Item:
    split: str
    id: str
    image: str
    label: str | None
    expected_label: str | None = None  # where the missing label should be


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"size '{text}' is not WIDTHxHEIGHT (e.g. 1280x720)")
    return int(parts[0]), int(parts[1])


def process_item(kind: str | DatasetSpec, root: Path, item: Item, opts: PrepareOptions,
                 cache_base: Path | None) -> Entry:
    """Inspect one pair; decide its status; count classes; write its cache files."""
    spec = get_dataset(kind)
    unlabelled_split = item.split in spec.unlabelled_splits
    entry = Entry(item.id, item.split, item.image, item.label, OK)
    image = None
    caching = cache_base is not None and item.split == "train"
    try:
        if caching:
            image = read_png(root / item.image, ImageReadMode.RGB, strict=True)
            entry.image_size = (image.shape[2], image.shape[1])
        else:  # the strict walk inflates the data once, which is all a check needs
            info = check_png((root / item.image).read_bytes(), root / item.image, strict=True)
            entry.image_size = (info.width, info.height)
    except CorruptPNGError as exc:
        entry.status, entry.image_ok, entry.detail = CORRUPT, False, str(exc)
    except OSError as exc:
        entry.status, entry.image_ok = CORRUPT, False
        entry.detail = f"cannot read {root / item.image}: {exc.strerror}"
    label = None
    if item.label is None:
        if entry.image_ok:
            entry.status, entry.detail = MISSING_LABEL, f"label {item.expected_label} not found"
    else:
        path = root / item.label
        try:
            ids = spec.label_ids(read_png(path, ImageReadMode.UNCHANGED, strict=True), path)
            entry.label_size = (ids.shape[1], ids.shape[0])
            label = spec.map_ids(ids)
        except DataError as exc:  # corrupt or unreadable unless it is an encoding/range problem
            status = (WRONG_ENCODING if isinstance(exc, LabelEncodingError) else
                      OUT_OF_RANGE if isinstance(exc, LabelRangeError) else CORRUPT)
            if entry.status == OK:
                entry.status, entry.detail = status, str(exc)
            else:
                entry.detail += f"; {exc}"
    if entry.image_ok and label is not None and entry.label_size != entry.image_size:
        if opts.on_mismatch == "drop":
            entry.status = DROPPED
            entry.detail = f"label {entry.label_size} differs from image {entry.image_size}"
        else:
            entry.status = RESIZED
            entry.detail = (f"label {entry.label_size} resized to {entry.image_size} "
                            f"(nearest neighbour)")
            iw, ih = entry.image_size  # type: ignore[misc]
            label = resize_label(label, (ih, iw))
    # Target-train class statistics would leak target labels to methods (the firewall).
    if label is not None and entry.status in USABLE and not unlabelled_split:
        valid = label[label < NUM_CLASSES].to(torch.int64)
        entry.class_counts = torch.bincount(valid, minlength=NUM_CLASSES).tolist()
    if caching and image is not None and (entry.status in USABLE or unlabelled_split):
        w, h = opts.cache_size  # type: ignore[misc]
        write_png(cache_base / item.split / "images" / f"{item.id}.png",
                  resize_image(image, (h, w), opts.interpolation))
        if label is not None and entry.status in USABLE:
            write_png(cache_base / item.split / "labels" / f"{item.id}.png",
                      resize_label(label, (h, w)))
        entry.cached = True
    return entry


def process_chunk(args: tuple[int, list[Item]], kind: str, root: Path, opts: PrepareOptions,
                  cache_base: Path | None, parts: Path) -> int:
    """Process one chunk and save its entries atomically; returns the number of items."""
    index, items = args
    entries = [asdict(process_item(kind, root, it, opts, cache_base)) for it in items]
    atomic_write_bytes(parts / f"chunk_{index:06d}.json", json.dumps(entries).encode())
    return len(items)


def _fingerprint(kind: str, items: list[Item], opts: PrepareOptions) -> str:
    blob = json.dumps({"kind": kind, "opts": asdict(opts) | {"workers": None},
                       "items": [asdict(i) for i in items]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def prepare_dataset(kind: str, root: Path, out_dir: Path | None = None,
                    opts: PrepareOptions = PrepareOptions(), console: Console | None = None
                    ) -> Manifest:
    """Run (or resume) prepare and write ``<out_dir>/manifest.json``; returns the manifest."""
    spec = get_dataset(kind)
    root = Path(root).resolve()
    layouts.check_root(spec, root)
    out_dir = Path(out_dir) if out_dir is not None else prepared_dir(root)
    scans = [layouts.scan(spec, root, split, with_labels=True) for split in spec.splits]
    items: list[Item] = []
    for s in scans:
        for pairs, has_label in ((s.pairs, True), (s.unlabelled, False)):
            for p in pairs:
                label = _rel(p.label, root)  # type: ignore[arg-type]
                items.append(Item(s.split, p.id, _rel(p.image, root), label if has_label else None,
                                  None if has_label else label))
    items.sort(key=lambda it: (it.split, it.id))
    orphans = [Entry(Path(p).stem, s.split, None, _rel(p, root), ORPHAN_LABEL,
                     detail="label without an image") for s in scans for p in s.orphan_labels]
    fingerprint = _fingerprint(kind, items, opts)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        try:
            old = Manifest.load(manifest_path)
            if old.fingerprint == fingerprint:
                if console is not None:
                    console.print(f"{manifest_path} is up to date")
                return old
        except UserError:
            pass  # unreadable or old version: rebuild it
    parts = out_dir / "parts" / fingerprint
    parts.mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "parts").iterdir():  # results of other file lists or options
        if stale.name != fingerprint:
            shutil.rmtree(stale, ignore_errors=True)
    cache_base = cache_dir(out_dir, opts.cache_size) if opts.cache_size else None
    chunks = [(i, items[i * opts.chunk_size: (i + 1) * opts.chunk_size])
              for i in range((len(items) + opts.chunk_size - 1) // opts.chunk_size)]
    todo = [c for c in chunks if not (parts / f"chunk_{c[0]:06d}.json").is_file()]
    with progress_bar(console) as bar:
        title = spec.title
        resumed = f" (resuming, {len(chunks) - len(todo)} of {len(chunks)} chunks done)" \
            if len(todo) < len(chunks) else ""
        task = bar.add_task(f"preparing {title}{resumed}", total=len(items),
                            completed=len(items) - sum(len(c[1]) for c in todo))
        parallel_map(_run_chunk, todo, opts.workers, lambda n: bar.advance(task, n),
                     kind, root, opts, cache_base, parts)
    entries: list[Entry] = []
    for index, _ in chunks:
        entries += [entry_from_dict(d)
                    for d in json.loads((parts / f"chunk_{index:06d}.json").read_text())]
    manifest = Manifest(kind, str(root), opts.on_mismatch, opts.cache_size, entries + orphans,
                        fingerprint)
    manifest.save(manifest_path)
    shutil.rmtree(out_dir / "parts", ignore_errors=True)
    return manifest


def _run_chunk(chunk: tuple[int, list[Item]], *args: Any) -> int:
    # Module-level indirection so tests can interrupt a run by patching process_chunk.
    return process_chunk(chunk, *args)


def summary_rows(manifest: Manifest) -> list[tuple[str, str]]:
    """(status, count) rows for the CLI table, usable first."""
    counts = manifest.counts
    return [(status, str(n)) for status, n in counts.items()]
