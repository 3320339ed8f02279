"""Does a manifest still describe the files on disk? Compares the files a dataset view would use
(its split; labels only for labelled views) with the manifest: files added or removed, labels
that appeared or vanished, unusable entries, and each file's size and modification time.

A stat per file is cheap (about 0.2 s for GTA5's 50k files), and it is what makes a manifest
safe to trust: a label replaced after prepare flagged it corrupt is never silently dropped.
"""
from __future__ import annotations

from pathlib import Path

from udabench.data import layouts
from udabench.data.manifest import UNUSABLE, Manifest, default_manifest_path, file_stat
from udabench.data.spec import DatasetSpec
from udabench.errors import DataError

SHOW = 3  # changes named in the error line


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def changes(manifest: Manifest, spec: DatasetSpec, root: Path, split: str,
            with_labels: bool = True) -> list[str]:
    """What differs between the manifest's ``split`` and the files on disk ([] when nothing)."""
    root = Path(root)
    scan = layouts.scan(spec, root, split, with_labels)
    recorded = {e.id: e for e in manifest.entries
                if e.split == split and e.image is not None and e.status != UNUSABLE}
    labelled = {p.id for p in scan.pairs if p.label is not None}
    now = {p.id: p for p in scan.pairs + scan.unlabelled}
    out = [f"{_rel(now[i].image, root)} added" for i in sorted(now.keys() - recorded.keys())]
    out += [f"{recorded[i].image} removed" for i in sorted(recorded.keys() - now.keys())]
    for image_id in sorted(now.keys() & recorded.keys()):
        entry, pair = recorded[image_id], now[image_id]
        if file_stat(pair.image) != entry.image_stat:
            out.append(f"{entry.image} changed")
        if not with_labels:
            continue
        label = _rel(pair.label, root) if image_id in labelled else None  # type: ignore[arg-type]
        if label != entry.label:
            out.append(f"label {label or entry.label} {'added' if label else 'removed'}")
        elif label is not None and file_stat(pair.label) != entry.label_stat:  # type: ignore[arg-type]
            out.append(f"{label} changed")
    unusable_now = {layouts.shown(_rel(p, root)) for p, _ in scan.problems}
    unusable_then = {p for e in manifest.entries if e.split == split and e.status == UNUSABLE
                     for p in (e.image, e.label if with_labels else None) if p}
    out += [f"{p} is now unusable" for p in sorted(unusable_now - unusable_then)]
    out += [f"{p} was fixed or removed" for p in sorted(unusable_then - unusable_now)]
    return out


def require_fresh(manifest: Manifest, path: Path, spec: DatasetSpec, root: Path, split: str,
                  with_labels: bool = True) -> None:
    """Raise one DataError when the manifest at ``path`` no longer matches the files."""
    found = changes(manifest, spec, root, split, with_labels)
    if not found:
        return
    listed = ", ".join(layouts.shown(c) for c in found[:SHOW])
    more = ", ..." if len(found) > SHOW else ""
    out = "" if Path(path) == default_manifest_path(root) else f" --out {Path(path).parent}"
    raise DataError(f"manifest {path} no longer matches {spec.title} {split} at {root}: "
                    f"{len(found)} change(s) since `udabench data prepare` ({listed}{more}); run "
                    f"`udabench data prepare {spec.name} --root {root}{out}` to update it (only "
                    f"what changed is checked again)")
