"""`udabench data prepare`: one pass over a dataset that writes the manifest (pairs, sizes, defect
handling, per-class pixel counts, each file's size and modification time) and optionally a resized
cache at the training resolution.

Incremental: a file whose size and modification time are those recorded keeps its entry; only new
or changed files are checked again (a replaced corrupt label is re-checked, and prepare never calls
a manifest "up to date" while a file differs from it). ``force`` re-checks everything; ``checksum``
re-reads everything and records each file's sha256. Work is cut into chunks whose results are
saved atomically under ``parts/<fingerprint>/``, so an interrupted run resumes where it stopped;
the fingerprint covers the file list, the file stats and the options, so a changed dataset or
option starts afresh instead of mixing results.
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
from udabench.data.manifest import (CORRUPT, DROPPED, MISSING_LABEL, ORPHAN_LABEL, OK, OUT_OF_RANGE,
                                    RESIZED, UNUSABLE, USABLE, WRONG_ENCODING, Entry, Manifest, Stat,
                                    cache_dir, entry_from_dict, file_stat, prepared_dir)
from udabench.data.parallel import parallel_map, progress_bar
from udabench.data.pngio import atomic_write_bytes, check_png, read_png, write_png
from udabench.data.registry import get_dataset
from udabench.data.spec import DatasetSpec, LabelEncodingError, LabelRangeError
from udabench.data.transforms import resize_image, resize_label
from udabench.errors import DataError, UserError
from udabench.taxonomy import NUM_CLASSES


@dataclass(frozen=True)
class PrepareOptions:
    on_mismatch: Literal["resize", "drop"] = "resize"  # training image/label size mismatch
    cache_size: tuple[int, int] | None = None  # (W, H) of the resized training cache; None = none
    interpolation: str = "bilinear"  # for cached images (labels always nearest)
    chunk_size: int = 64  # pairs per saved partial result
    workers: int = 1
    checksum: bool = False  # re-read every file and record its sha256

    def __post_init__(self) -> None:
        if self.on_mismatch not in ("resize", "drop"):
            raise UserError(f"--on-mismatch must be resize or drop, got '{self.on_mismatch}'")
        if self.cache_size is not None and min(self.cache_size) < 1:
            raise UserError(f"cache size {self.cache_size} must be positive (W, H)")

    def result_options(self) -> dict[str, Any]:
        """The options that change entries (not how the work is done)."""
        return {"on_mismatch": self.on_mismatch, "cache_size": self.cache_size,
                "interpolation": self.interpolation}


@dataclass(frozen=True)
class Item:
    split: str
    id: str
    image: str
    label: str | None
    expected_label: str | None = None  # where the missing label should be
    image_stat: Stat | None = None
    label_stat: Stat | None = None


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"size '{text}' is not WIDTHxHEIGHT (e.g. 1280x720)")
    return int(parts[0]), int(parts[1])


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _check_label(spec: DatasetSpec, entry: Entry, path: Path) -> torch.Tensor | None:
    """Decode the label into trainIds; a problem becomes the entry's status and detail."""
    try:
        ids = spec.label_ids(read_png(path, ImageReadMode.UNCHANGED, strict=True), path)
    except DataError as exc:  # corrupt or unreadable unless it is an encoding/range problem
        status = (WRONG_ENCODING if isinstance(exc, LabelEncodingError) else
                  OUT_OF_RANGE if isinstance(exc, LabelRangeError) else CORRUPT)
        if entry.status == OK:
            entry.status, entry.detail = status, str(exc)
        else:
            entry.detail += f"; {exc}"
        return None
    entry.label_size = (ids.shape[1], ids.shape[0])
    unknown = spec.unknown_id_pixels(ids)
    if unknown:
        entry.detail = f"{unknown} pixels hold ids above {spec.max_label_value}, read as ignore"
    return spec.map_ids(ids)


def process_item(kind: str | DatasetSpec, root: Path, item: Item, opts: PrepareOptions,
                 cache_base: Path | None) -> Entry:
    """Inspect one pair; decide its status; count classes; write its cache files."""
    spec = get_dataset(kind)
    unlabelled_split = item.split in spec.unlabelled_splits
    scored_split = item.split in spec.eval_splits
    entry = Entry(item.id, item.split, item.image, item.label, OK,
                  image_stat=item.image_stat, label_stat=item.label_stat)
    if opts.checksum:
        entry.image_sha256 = _sha256(root / item.image)
        entry.label_sha256 = _sha256(root / item.label) if item.label else None
    image = None
    caching = cache_base is not None and not scored_split
    try:
        if caching:
            image = read_png(root / item.image, ImageReadMode.RGB, strict=True)
            entry.image_size = (image.shape[2], image.shape[1])
        else:  # the strict walk inflates the data once, which is all a check needs
            info = check_png((root / item.image).read_bytes(), root / item.image, strict=True)
            entry.image_size = (info.width, info.height)
    except DataError as exc:
        entry.status, entry.image_ok, entry.detail = CORRUPT, False, str(exc)
    except OSError as exc:
        entry.status, entry.image_ok = CORRUPT, False
        entry.detail = f"cannot read {root / item.image}: {exc.strerror}"
    label = None
    if item.label is None:
        if entry.image_ok:
            entry.status = MISSING_LABEL
            entry.detail = (f"label {item.expected_label} not found" if item.expected_label
                            else "the split has no labels")
    else:
        label = _check_label(spec, entry, root / item.label)
    if entry.image_ok and label is not None and entry.label_size != entry.image_size:
        mismatch = f"label {entry.label_size} differs from image {entry.image_size}"
        if scored_split:  # scored at the label's own size: nothing to repair
            entry.detail = f"{mismatch}; scored at the label's size"
        elif opts.on_mismatch == "drop":
            entry.status, entry.detail = DROPPED, mismatch
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
        if not valid.numel():
            entry.detail = "; ".join(filter(None, [entry.detail, "no valid pixel (all void)"]))
    if caching and image is not None and (entry.status in USABLE or unlabelled_split):
        w, h = opts.cache_size  # type: ignore[misc]
        write_png(cache_base / item.split / "images" / f"{item.id}.png",  # type: ignore[operator]
                  resize_image(image, (h, w), opts.interpolation))
        if label is not None and entry.status in USABLE:
            write_png(cache_base / item.split / "labels" / f"{item.id}.png",  # type: ignore[operator]
                      resize_label(label, (h, w)))
        entry.cached = True
    return entry


def process_chunk(args: tuple[int, list[Item]], kind: str | DatasetSpec, root: Path,
                  opts: PrepareOptions, cache_base: Path | None, parts: Path) -> int:
    """Process one chunk and save its entries atomically; returns the number of items."""
    index, items = args
    entries = [asdict(process_item(kind, root, it, opts, cache_base)) for it in items]
    atomic_write_bytes(parts / f"chunk_{index:06d}.json", json.dumps(entries).encode())
    return len(items)


def _fingerprint(kind: str, items: list[Item], others: list[Entry], opts: PrepareOptions) -> str:
    blob = json.dumps({"kind": kind, "opts": opts.result_options(), "chunk": opts.chunk_size,
                       "checksum": opts.checksum, "items": [asdict(i) for i in items],
                       "others": [asdict(e) for e in others]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _items(spec: DatasetSpec, root: Path) -> tuple[list[Item], list[Entry]]:
    """Every pair to check (with file stats), and the entries no check is needed for (labels
    without an image, unusable entries)."""
    items: list[Item] = []
    others: list[Entry] = []
    for split in spec.splits:
        image_base = layouts.base_folder(spec.images, root, split)
        label_base = layouts.base_folder(spec.labels, root, split)
        s = layouts.scan(spec, root, split, layouts.labels_expected(spec, root, split))
        for pairs, paired in ((s.pairs, True), (s.unlabelled, False)):
            for p in pairs:
                label = _rel(p.label, root) if p.label is not None else None  # None: no labels
                has_label = paired and label is not None
                items.append(Item(split, p.id, _rel(p.image, root), label if has_label else None,
                                  None if has_label else label, file_stat(p.image),
                                  file_stat(p.label) if has_label else None))  # type: ignore[arg-type]
        others += [Entry(Path(p).name[:-4], split, None, _rel(p, root), ORPHAN_LABEL,
                         detail="label without an image", label_stat=file_stat(p))
                   for p in s.orphan_labels]
        for path, why in s.problems:
            rel = layouts.shown(_rel(path, root))
            is_image = path.is_relative_to(image_base) and not (
                path.is_relative_to(label_base) and len(label_base.parts) > len(image_base.parts))
            others.append(Entry(layouts.shown(path.name), split, rel if is_image else None,
                                None if is_image else rel, UNUSABLE, detail=why))
    items.sort(key=lambda it: (it.split, it.id))
    return items, others


def _reusable(old: Manifest | None, opts: PrepareOptions) -> dict[tuple[str, str], Entry]:
    """Entries of the previous manifest that are valid for these options, by (split, id)."""
    if old is None or opts.checksum or (old.on_mismatch, old.cache_size, old.interpolation) != (
            opts.on_mismatch, opts.cache_size, opts.interpolation):
        return {}
    return {(e.split, e.id): e for e in old.entries if e.status not in (ORPHAN_LABEL, UNUSABLE)}


def _same_files(entry: Entry, item: Item) -> bool:
    return (entry.image, entry.label, entry.image_stat, entry.label_stat) == \
        (item.image, item.label, item.image_stat, item.label_stat)


def _load_previous(path: Path) -> Manifest | None:
    if not path.is_file():
        return None
    try:
        return Manifest.load(path)
    except UserError:
        return None  # unreadable or an old version: rebuilt


def prepare_dataset(kind: str | DatasetSpec, root: Path, out_dir: Path | None = None,
                    opts: PrepareOptions = PrepareOptions(), console: Console | None = None,
                    force: bool = False) -> Manifest:
    """Run (or resume, or update) prepare and write ``<out_dir>/manifest.json``."""
    spec = get_dataset(kind)
    root = Path(root).resolve()
    layouts.check_root(spec, root)
    out_dir = Path(out_dir) if out_dir is not None else prepared_dir(root)
    items, others = _items(spec, root)
    fingerprint = _fingerprint(spec.name, items, others, opts)
    manifest_path = out_dir / "manifest.json"
    old = None if force else _load_previous(manifest_path)
    if old is not None and old.fingerprint == fingerprint and not opts.checksum:
        if console is not None:
            console.print(f"{manifest_path} is up to date")
        return old
    previous = _reusable(old, opts)
    done: dict[int, Entry] = {}
    for i, item in enumerate(items):
        entry = previous.get((item.split, item.id))
        if entry is not None and _same_files(entry, item):
            done[i] = entry
    todo_items = [it for i, it in enumerate(items) if i not in done]
    parts = out_dir / "parts" / fingerprint
    parts.mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "parts").iterdir():  # results of other file lists or options
        if stale.name != fingerprint:
            shutil.rmtree(stale, ignore_errors=True)
    cache_base = cache_dir(out_dir, opts.cache_size) if opts.cache_size else None
    size = opts.chunk_size
    chunks = [(i, todo_items[i * size: (i + 1) * size])
              for i in range((len(todo_items) + size - 1) // size)]
    todo = [c for c in chunks if not (parts / f"chunk_{c[0]:06d}.json").is_file()]
    with progress_bar(console) as bar:
        resumed = f" (resuming, {len(chunks) - len(todo)} of {len(chunks)} chunks done)" \
            if len(todo) < len(chunks) else ""
        kept = f", {len(done)} unchanged" if done else ""
        task = bar.add_task(f"preparing {spec.title}{resumed}{kept}", total=len(todo_items),
                            completed=len(todo_items) - sum(len(c[1]) for c in todo))
        parallel_map(_run_chunk, todo, opts.workers, lambda n: bar.advance(task, n),
                     spec, root, opts, cache_base, parts)
    fresh: list[Entry] = []
    for index, _ in chunks:
        fresh += [entry_from_dict(d)
                  for d in json.loads((parts / f"chunk_{index:06d}.json").read_text())]
    fresh_iter = iter(fresh)
    entries = [done[i] if i in done else next(fresh_iter) for i in range(len(items))]
    manifest = Manifest(spec.name, str(root), opts.on_mismatch, opts.cache_size, entries + others,
                        fingerprint, checksums=opts.checksum, interpolation=opts.interpolation)
    manifest.save(manifest_path)
    shutil.rmtree(out_dir / "parts", ignore_errors=True)
    if console is not None and old is not None and done:
        console.print(f"{len(todo_items)} new or changed pairs checked, {len(done)} unchanged")
    return manifest


def _run_chunk(chunk: tuple[int, list[Item]], *args: Any) -> int:
    # Module-level indirection so tests can interrupt a run by patching process_chunk.
    return process_chunk(chunk, *args)


def summary_rows(manifest: Manifest) -> list[tuple[str, str]]:
    """(status, count) rows for the CLI table, usable first."""
    counts = manifest.counts
    return [(status, str(n)) for status, n in counts.items()]
