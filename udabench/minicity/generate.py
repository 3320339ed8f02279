"""Generate MiniCity on first use, reuse it afterwards.

Layout: <data_root>/minicity/<params.key()>/{gta5,synthia,cityscapes}/ in the real dataset trees.
Each part gets a completion marker (JSON with the params), written atomically after its last
image; an interrupted generation therefore lacks the marker and is resumed: files that are whole
(every PNG is written atomically and ends in IEND) are kept, missing ones are rendered again. Since
every image is a pure function of (params, split, index), a resumed or concurrent generation
writes exactly the bytes a single run would. New params give a new key, hence a new folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from udabench.errors import DataError, UserError
from udabench.minicity.formats import (CITYSCAPES_GT_FILES, write_atomic, write_cityscapes,
                                      write_gta5, write_synthia)
from udabench.minicity.params import GENERATOR_VERSION, MiniCityParams

SOURCES = ("gta5", "synthia")
MARKER = ".minicity_complete.json"


@dataclass(frozen=True)
class MiniCityPaths:
    root: Path  # <data_root>/minicity/<key>
    gta5: Path  # GTA5 tree (generated when "gta5" is among the requested sources)
    synthia: Path  # SYNTHIA-RAND-CITYSCAPES tree (generated when "synthia" is requested)
    cityscapes: Path  # Cityscapes tree (always generated: the target of every benchmark)


def _marker_body(params: MiniCityParams, part: str, counts: dict[str, int]) -> dict:
    body = {"generator_version": GENERATOR_VERSION, "key": params.key(), "part": part,
            "counts": counts, "params": params.to_dict()}
    if part == "cityscapes":
        # Which ground-truth files each image has. Not part of the key (the pixels do not change):
        # a tree generated before a file kind was added lacks it in its marker, so it is completed
        # on first use (existing files are kept) instead of being generated again under a new key.
        body["files"] = list(CITYSCAPES_GT_FILES)
    return body


def _is_complete(folder: Path, expected: dict) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == expected
    except (OSError, ValueError):
        return False


def ensure_minicity(data_root: Path, params: MiniCityParams = MiniCityParams(),
                    sources: tuple[str, ...] = SOURCES, console: Console | None = None) -> MiniCityPaths:
    """Paths of a complete MiniCity for params, generating (or finishing) it when needed."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise UserError(f"unknown MiniCity source '{unknown[0]}'; "
                        f"expected some of: {', '.join(SOURCES)}")
    root = Path(data_root).expanduser() / "minicity" / params.key()
    paths = MiniCityPaths(root, root / "gta5", root / "synthia", root / "cityscapes")
    parts = {
        "gta5": (paths.gta5, {"images": params.n_source},
                 lambda folder, **kw: write_gta5(folder, params, params.n_source, **kw)),
        "synthia": (paths.synthia, {"images": params.n_source},
                    lambda folder, **kw: write_synthia(folder, params, params.n_source, **kw)),
        "cityscapes": (paths.cityscapes, {"train": params.n_target_train, "val": params.n_target_val},
                       lambda folder, **kw: write_cityscapes(folder, params, params.n_target_train,
                                                             params.n_target_val, **kw)),
    }
    wanted = [s for s in SOURCES if s in sources] + ["cityscapes"]
    todo = [name for name in wanted
            if not _is_complete(parts[name][0], _marker_body(params, name, parts[name][1]))]
    if not todo:
        return paths
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(root / "params.json", json.dumps(
            {"generator_version": GENERATOR_VERSION, "key": params.key(), "params": params.to_dict()},
            indent=2).encode())
    except OSError as exc:
        raise DataError(f"cannot create the MiniCity folder {root}: {exc.strerror or exc}; "
                        "choose a writable data root") from None
    console = console or Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        for name in todo:
            folder, counts, write = parts[name]
            task = bar.add_task(f"MiniCity {name} ({params.height}x{params.width})",
                                total=sum(counts.values()))
            try:
                write(folder, progress=lambda k, t=task: bar.advance(t, k), skip_existing=True)
                # the marker goes last: its presence means every file of the part is whole
                write_atomic(folder / MARKER,
                             json.dumps(_marker_body(params, name, counts), indent=2).encode())
            except OSError as exc:
                raise DataError(f"cannot write MiniCity into {folder}: {exc.strerror or exc}; "
                                "free space or choose another data root") from None
    return paths
