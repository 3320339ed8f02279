"""The manifest `udabench data prepare` writes: every pair, its sizes, what was done about defects,
and per-class pixel counts. Datasets built with a manifest use exactly its usable entries, so a
defect is handled once, recorded and counted, never silently dropped at training time.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from udabench.data.pngio import atomic_write_bytes
from udabench.errors import DataError

MANIFEST_VERSION = 1
PREPARED_DIR = "udabench_prepared"
MANIFEST_NAME = "manifest.json"

# Entry statuses. Only USABLE ones are served by datasets built from a manifest.
OK, RESIZED = "ok", "resized_label"
DROPPED, CORRUPT, MISSING_LABEL = "dropped_size_mismatch", "corrupt", "missing_label"
WRONG_ENCODING, OUT_OF_RANGE, ORPHAN_LABEL = "wrong_encoding", "label_out_of_range", "orphan_label"
USABLE = (OK, RESIZED)
STATUSES = (OK, RESIZED, DROPPED, CORRUPT, MISSING_LABEL, WRONG_ENCODING, OUT_OF_RANGE, ORPHAN_LABEL)


@dataclass
class Entry:
    id: str
    split: str
    image: str | None  # relative to the dataset root, posix separators (None: orphan label)
    label: str | None
    status: str
    image_size: tuple[int, int] | None = None  # (W, H)
    label_size: tuple[int, int] | None = None  # (W, H) as stored on disk
    detail: str = ""
    class_counts: list[int] | None = None  # pixels per trainId 0..18 (source and val only)
    cached: bool = False
    image_ok: bool = True  # False when the image itself is corrupt (label-free views skip it)


@dataclass
class Manifest:
    kind: str
    root: str
    on_mismatch: str
    cache_size: tuple[int, int] | None  # (W, H) of the resized cache, if written
    entries: list[Entry] = field(default_factory=list)
    fingerprint: str = ""  # of the file list and options; an equal one means up to date
    version: int = MANIFEST_VERSION

    @property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for e in self.entries:
            out[e.status] += 1
        return out

    def usable(self, split: str) -> list[Entry]:
        return [e for e in self.entries if e.split == split and e.status in USABLE]

    def class_counts(self, split: str = "train") -> np.ndarray:
        """[N, 19] int64 pixel counts of the usable entries, in dataset order (for class balance)."""
        rows = [e.class_counts for e in self.usable(split)]
        if any(r is None for r in rows):
            raise DataError(f"manifest of {self.root} has no class counts for split '{split}'")
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), 19)

    def to_json(self) -> str:
        """Readable header, then one compact line per entry (25k entries stay a few MB)."""
        head = {k: v for k, v in asdict(self).items() if k != "entries"}
        head["counts"] = self.counts
        lines = [json.dumps(asdict(e), separators=(",", ":")) for e in self.entries]
        body = json.dumps(head, indent=1)[:-2]
        return body + ',\n "entries": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, self.to_json().encode())

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"manifest {path} not found; run `udabench data prepare`") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"manifest {path} is unreadable ({exc}); run `udabench data prepare` again"
                            ) from None
        if raw.get("version") != MANIFEST_VERSION:
            raise DataError(f"manifest {path} has version {raw.get('version')}, expected "
                            f"{MANIFEST_VERSION}; run `udabench data prepare` again")
        raw.pop("counts", None)
        entries = [entry_from_dict(e) for e in raw.pop("entries")]
        cache = raw.pop("cache_size")
        return cls(entries=entries, cache_size=tuple(cache) if cache else None, **raw)


def entry_from_dict(d: dict) -> Entry:
    d = dict(d)
    for key in ("image_size", "label_size"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return Entry(**d)


def prepared_dir(root: Path) -> Path:
    return Path(root) / PREPARED_DIR


def default_manifest_path(root: Path) -> Path:
    return prepared_dir(root) / MANIFEST_NAME


def cache_dir(out_dir: Path, size: tuple[int, int]) -> Path:
    return Path(out_dir) / "cache" / f"{size[0]}x{size[1]}"
