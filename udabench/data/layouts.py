"""Finding a dataset's files by its descriptor's file patterns (``udabench.data.spec``).

Scanning pairs every image with its label by id. A missing, misnamed or empty folder is ONE
DataError naming the folder, what is there instead and where the data comes from. Entries that
cannot be used - links that are broken or loop, folders or FIFOs named like images, names that
are not UTF-8 or hold control characters, two files for one id (``00001.png`` and ``00001.PNG``)
- are collected as problems, one line each, and never skipped silently. The ``.png`` extension
matches in any letter case. Names starting with a dot (editor and macOS ``._`` files, udabench's
own temporary files) are not dataset files. udabench never downloads datasets.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from udabench.data.registry import get_dataset
from udabench.data.spec import DatasetSpec, FilePattern
from udabench.errors import DataError

KINDS = ("gta5", "synthia", "cityscapes")  # the built-in datasets; all of them: dataset_names()


@dataclass(frozen=True)
class Pair:
    id: str
    image: Path
    label: Path | None  # None for label-free views (target train) and for images missing a label
    groups: tuple[str, ...] = ()  # the names of the pattern's '*' folders (a Cityscapes city)


@dataclass
class Scan:
    """Result of pairing a dataset's files; problems are kept, not raised."""

    kind: str
    root: Path
    split: str
    pairs: list[Pair] = field(default_factory=list)  # images that have a label (or no label wanted)
    unlabelled: list[Pair] = field(default_factory=list)  # images whose label (.label) is absent
    orphan_labels: list[Path] = field(default_factory=list)  # labels whose image is absent
    problems: list[tuple[Path, str]] = field(default_factory=list)  # unusable entries, with why

    @property
    def missing_labels(self) -> list[Path]:
        return [p.label for p in self.unlabelled]  # type: ignore[misc]


def layout(kind: str | DatasetSpec) -> DatasetSpec:
    """The descriptor of a dataset (kept under this name for the layout-level callers)."""
    return get_dataset(kind)


def where_to_get(kind: str | DatasetSpec, root: Path) -> str:
    return get_dataset(kind).where_to_get(Path(root))


def shown(path: Path | str) -> str:
    """A path printable on one line: control characters and undecodable bytes escaped."""
    text = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def odd_name(name: str) -> str | None:
    """Why a file or folder name cannot be used safely, or None."""
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return "its name is not valid UTF-8; rename it"
    if not name.isprintable():
        return "its name holds a control character (newline, tab...); rename it"
    return None


def _entries(folder: Path) -> list[os.DirEntry]:
    """The visible entries of a folder, sorted by name; an unreadable folder is one DataError."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot read folder {shown(folder)}: {exc.strerror or exc}; check that it "
                        f"exists and its permissions") from None


def _kind_of(entry: os.DirEntry) -> tuple[str, str]:
    """('dir' | 'file' | 'bad', why) following links; a loop or broken link is 'bad'."""
    try:
        if entry.is_dir():
            return "dir", ""
        if entry.is_file():
            return "file", ""
    except OSError as exc:  # ELOOP: is_dir()/is_file() raise on a link loop
        return "bad", f"cannot be opened: {exc.strerror or exc}"
    if entry.is_symlink():
        return "bad", "is a broken symbolic link"
    return "bad", "is not a regular file (a FIFO, socket or device)"


def _literal_names(spec: DatasetSpec) -> set[str]:
    return {f for p in (spec.images, spec.labels) for f in p.folders if f not in ("*", "{split}")}


def _missing_folder(spec: DatasetSpec, root: Path, path: Path) -> DataError:
    """The folder ``path`` is absent: say what is there instead, and what to rename or extract."""
    parent = path.parent
    found = ([e.name for e in _entries(parent) if _kind_of(e)[0] == "dir"]
             if parent.is_dir() else [])
    expected = _literal_names(spec) | set(spec.splits)
    # Never suggest renaming a folder the layout itself uses ('labels' into 'images').
    candidates = {n.lower(): n for n in found if n not in expected}
    close = difflib.get_close_matches(path.name.lower(), list(candidates), n=1, cutoff=0.5)
    if close:
        hint = f" (found '{candidates[close[0]]}': rename it to '{path.name}')"
    elif any(n in expected for n in found):
        present = ", ".join(f"'{n}'" for n in found if n in expected)
        hint = (f" ({parent} has {present} but no '{path.name}': that part of {spec.title} was "
                f"not extracted, or not here)")
    else:
        inner = [n for n in found if (parent / n / path.name).is_dir()]
        hint = (f" (found {parent / inner[0] / path.name}: is {parent / inner[0]} the "
                f"{spec.title} folder?)" if inner else "")
    there = f"{parent} contains: {', '.join(map(shown, found)) or 'no folders'}; " \
        if parent.is_dir() else ""
    return DataError(f"{spec.title} folder {path} not found{hint}; {there}"
                     f"{spec.where_to_get(root)}")


def base_folder(pattern: FilePattern, root: Path, split: str) -> Path:
    """The deepest folder of a pattern that has no wildcard above it (for messages)."""
    out = Path(root)
    for folder in pattern.folders:
        if folder == "*":
            break
        out = out / (split if folder == "{split}" else folder)
    return out


def find_files(spec: DatasetSpec, root: Path, pattern: FilePattern, split: str,
               problems: list[tuple[Path, str]]) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """id -> (file, '*' folder names) for every file matching ``pattern``; unusable entries are
    appended to ``problems``. A missing literal folder raises one DataError."""
    level: list[tuple[Path, tuple[str, ...]]] = [(Path(root), ())]
    prefix, suffix = pattern.prefix.lower(), pattern.suffix.lower()

    def matches(name: str) -> bool:
        low = name.lower()
        return len(name) > len(prefix) + len(suffix) and low.startswith(prefix) \
            and low.endswith(suffix)

    for folder in pattern.folders:
        deeper: list[tuple[Path, tuple[str, ...]]] = []
        for path, groups in level:
            if folder != "*":
                sub = path / (split if folder == "{split}" else folder)
                if not sub.is_dir():
                    raise _missing_folder(spec, root, sub)
                deeper.append((sub, groups))
                continue
            for entry in _entries(path):
                kind, why = _kind_of(entry)
                odd = odd_name(entry.name)
                if kind == "dir" and not odd:
                    deeper.append((Path(entry.path), groups + (entry.name,)))
                elif kind == "dir" or (kind == "bad" and entry.is_symlink()):
                    problems.append((Path(entry.path), odd or why))
                elif matches(entry.name):
                    problems.append((Path(entry.path), f"lies directly in {path}; {spec.title} "
                                     f"keeps these files one folder deeper"))
        level = deeper
    found: dict[str, tuple[Path, tuple[str, ...]]] = {}
    twice: dict[str, list[Path]] = {}
    for path, groups in level:
        for entry in _entries(path):
            if not matches(entry.name):
                continue
            kind, why = _kind_of(entry)
            why = odd_name(entry.name) or {"file": "", "dir": "is a folder, not a file"}.get(kind, why)
            if why:
                problems.append((Path(entry.path), why))
                continue
            id = entry.name[len(prefix): len(entry.name) - len(suffix)]
            file = path / entry.name  # cheaper than parsing entry.path (50k files for GTA5)
            if id in found or id in twice:
                twice.setdefault(id, [found.pop(id)[0]] if id in found else []).append(file)
            else:
                found[id] = (file, groups)
    for id, paths in twice.items():  # which one is meant cannot be told: neither is used
        for p in paths:
            others = ", ".join(shown(o) for o in paths if o != p)
            problems.append((p, f"a second file for id '{id}' (also {others}); keep one"))
    return found


def _empty(spec: DatasetSpec, root: Path, pattern: FilePattern, split: str,
           problems: list[tuple[Path, str]]) -> DataError:
    folder = base_folder(pattern, root, split)
    unusable = [p for p, _ in problems if str(p).startswith(str(folder))]
    if unusable:
        why = dict(problems)[unusable[0]]
        extra = f" ({len(unusable)} unusable, e.g. {shown(unusable[0])}: {why})"
    else:
        others = [e.name for e in _entries(folder) if _kind_of(e)[0] == "file"] \
            if folder.is_dir() else []
        extra = (f" (it holds {len(others)} other files, e.g. {shown(others[0])}; udabench reads "
                 f"PNG files named like {pattern.prefix}<id>{pattern.suffix})" if others else "")
    return DataError(f"no PNG files in {shown(folder)}{extra}; {spec.where_to_get(root)}")


def check_root(kind: str | DatasetSpec, root: Path) -> None:
    """Raise one DataError if the dataset root is missing (with the expected tree and source)."""
    spec = get_dataset(kind)
    if not Path(root).is_dir():
        raise DataError(f"{spec.title} not found at {root}; {spec.where_to_get(Path(root))}")


def scan(kind: str | DatasetSpec, root: Path, split: str = "train", with_labels: bool = True
         ) -> Scan:
    """Pair images and labels of one split; raise on missing or empty folders."""
    spec, root = get_dataset(kind), Path(root)
    check_root(spec, root)
    spec.check_split(split)
    result = Scan(spec.name, root, split)
    images = find_files(spec, root, spec.images, split, result.problems)
    if not images:
        raise _empty(spec, root, spec.images, split, result.problems)
    labels = find_files(spec, root, spec.labels, split, result.problems) if with_labels else {}
    if with_labels and not labels:
        raise _empty(spec, root, spec.labels, split, result.problems)
    same_depth = spec.labels.wildcards == spec.images.wildcards
    for id in sorted(images):
        path, groups = images[id]
        if not with_labels:
            result.pairs.append(Pair(id, path, None, groups))
        elif id in labels:
            result.pairs.append(Pair(id, path, labels[id][0], groups))
        else:
            expected = spec.labels.path(root, split, id, groups if same_depth else ())
            result.unlabelled.append(Pair(id, path, expected, groups))
    result.orphan_labels = [labels[i][0] for i in sorted(set(labels) - set(images))]
    return result


def labels_expected(spec: DatasetSpec, root: Path, split: str) -> bool:
    """Whether verify and prepare check the labels of a split: always, except for the target's
    unlabelled training split when its label folder is absent (Dark Zurich ships none)."""
    return split not in spec.unlabelled_splits or base_folder(spec.labels, root, split).is_dir()


def label_files(spec: DatasetSpec, root: Path, split: str) -> dict[str, Path]:
    """id -> label file of a split (no images needed); unusable entries raise one DataError."""
    check_root(spec, root)
    spec.check_split(split)
    problems: list[tuple[Path, str]] = []
    found = find_files(spec, root, spec.labels, split, problems)
    if problems:
        raise _problems_error(spec, root, problems)
    if not found:
        raise _empty(spec, root, spec.labels, split, problems)
    return {id: path for id, (path, _) in found.items()}


def _problems_error(spec: DatasetSpec, root: Path, problems: list[tuple[Path, str]]) -> DataError:
    listed = "; ".join(f"{shown(p)}: {why}" for p, why in problems[:3])
    more = f"; ... ({len(problems)} in all)" if len(problems) > 3 else ""
    return DataError(f"{len(problems)} files of {spec.title} at {root} cannot be used: {listed}{more}"
                     f"; fix or remove them, or run `udabench data prepare {spec.name}` to record "
                     f"and skip them")


def require_complete(scan_result: Scan) -> None:
    """Raise if an entry is unusable or some image has no label (the loader cannot use them)."""
    spec = get_dataset(scan_result.kind)
    if scan_result.problems:
        raise _problems_error(spec, scan_result.root, scan_result.problems)
    missing = scan_result.missing_labels
    if missing:
        first = ", ".join(shown(p) for p in missing[:3])
        raise DataError(
            f"{len(missing)} {spec.title} images have no label (missing: {first}"
            f"{', ...' if len(missing) > 3 else ''}); restore them, or run "
            f"`udabench data prepare {scan_result.kind}` to record and skip them"
        )
