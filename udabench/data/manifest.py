"""The manifest `udabench data prepare` writes: every pair, its sizes, what was done about defects,
per-class pixel counts, and each file's size and modification time (and, on request, its sha256).

Datasets built with a manifest use exactly its usable entries, so a defect is handled once,
recorded and counted, never silently dropped at training time. A dataset refuses a manifest that
no longer describes the files on disk (a file added, removed, replaced or touched since prepare):
running prepare again re-checks only what changed.

Where a dataset's manifest is: an explicit path, else ``$UDABENCH_MANIFEST_<NAME>`` (e.g.
``UDABENCH_MANIFEST_GTA5``), else the location configured with ``configure_manifests`` (from
udabench.toml), else ``<root>/udabench_prepared/manifest.json`` when it exists. A manifest found
through the environment or the configuration must be the one of that dataset folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from udabench.fileio import atomic_write_bytes
from udabench.errors import DataError

MANIFEST_VERSION = 2  # 2: per-file size/mtime (and sha256), unusable entries
PREPARED_DIR = "udabench_prepared"
MANIFEST_NAME = "manifest.json"
ENV_PREFIX = "UDABENCH_MANIFEST_"

# Entry statuses. Only USABLE ones are served by datasets built from a manifest.
OK, RESIZED = "ok", "resized_label"
DROPPED, CORRUPT, MISSING_LABEL = "dropped_size_mismatch", "corrupt", "missing_label"
WRONG_ENCODING, OUT_OF_RANGE, ORPHAN_LABEL = "wrong_encoding", "label_out_of_range", "orphan_label"
UNUSABLE = "unusable_file"  # a link loop, FIFO, odd name... (never read)
USABLE = (OK, RESIZED)
STATUSES = (OK, RESIZED, DROPPED, CORRUPT, MISSING_LABEL, WRONG_ENCODING, OUT_OF_RANGE,
            ORPHAN_LABEL, UNUSABLE)

Stat = tuple[int, int]  # (size in bytes, modification time in ns)


def file_stat(path: Path) -> Stat | None:
    """(size, mtime_ns) of a file, following links; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


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
    image_stat: Stat | None = None  # (size, mtime_ns) when prepare looked at the file
    label_stat: Stat | None = None
    image_sha256: str | None = None  # with `prepare --checksum`
    label_sha256: str | None = None


@dataclass
class Manifest:
    kind: str
    root: str
    on_mismatch: str
    cache_size: tuple[int, int] | None  # (W, H) of the resized cache, if written
    entries: list[Entry] = field(default_factory=list)
    fingerprint: str = ""  # of the file list, file stats and options; an equal one: up to date
    checksums: bool = False  # every file's sha256 was recorded
    interpolation: str = "bilinear"  # of the cached images
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
        if not isinstance(raw, dict) or raw.get("version") != MANIFEST_VERSION:
            found = raw.get("version") if isinstance(raw, dict) else None
            raise DataError(f"manifest {path} has version {found}, expected "
                            f"{MANIFEST_VERSION}; run `udabench data prepare` again")
        try:
            raw.pop("counts", None)
            entries = [entry_from_dict(e) for e in raw.pop("entries")]
            cache = raw.pop("cache_size")
            return cls(entries=entries, cache_size=tuple(cache) if cache else None, **raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"manifest {path} is damaged ({type(exc).__name__}: {exc}); run "
                            f"`udabench data prepare` again") from None


def entry_from_dict(d: dict) -> Entry:
    d = dict(d)
    for key in ("image_size", "label_size", "image_stat", "label_stat"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return Entry(**d)


def prepared_dir(root: Path) -> Path:
    return Path(root) / PREPARED_DIR


def default_manifest_path(root: Path) -> Path:
    return prepared_dir(root) / MANIFEST_NAME


def cache_dir(out_dir: Path, size: tuple[int, int]) -> Path:
    return Path(out_dir) / "cache" / f"{size[0]}x{size[1]}"


# -- where a dataset's manifest is ----------------------------------------------------------------
_CONFIGURED: dict[str, Path] = {}


def env_var(kind: str) -> str:
    """The environment variable that points dataset ``kind`` at a manifest."""
    return ENV_PREFIX + "".join(c if c.isalnum() else "_" for c in kind).upper()


def configure_manifests(locations: dict[str, str | Path]) -> None:
    """Manifests written elsewhere (``prepare --out``), by dataset name; replaces earlier ones.
    Called with udabench.toml's setting; the environment variables still take precedence."""
    from udabench.data.registry import get_dataset

    for kind in locations:
        get_dataset(kind)  # an unknown dataset name is one error line
    _CONFIGURED.clear()
    _CONFIGURED.update({k: Path(v).expanduser() for k, v in locations.items()})


def locate_manifest(kind: str, title: str, root: Path,
                    manifest: Path | Literal["auto"] | None = "auto") -> Path | None:
    """The manifest a dataset of ``kind`` at ``root`` uses (see the module docstring), or None."""
    if manifest is None:
        return None
    if manifest != "auto":
        return Path(manifest)
    env = os.environ.get(env_var(kind))
    source, path = ((f"${env_var(kind)}", Path(env).expanduser()) if env else
                    (f"the configured manifest of {kind}", _CONFIGURED[kind])
                    if kind in _CONFIGURED else (None, None))
    if source is None or path is None:
        default = default_manifest_path(root)
        return default if default.is_file() else None
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{source} points at {path}, which does not exist; write it with "
                        f"`udabench data prepare {kind} --root {root} --out {path.parent}`")
    recorded = Path(Manifest.load(path).root)
    if _same_folder(recorded, Path(root)):
        return path
    raise DataError(f"{source} points at {path}, the manifest of {recorded}, not of this "
                    f"{title} folder {root}; prepare this folder (`udabench data prepare {kind} "
                    f"--root {root} --out DIR`) or unset it")


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
