"""`udabench data verify|prepare|list`: check a dataset on disk, prepare its manifest, list datasets."""
from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from udabench.data.layouts import layout
from udabench.data.manifest import env_var
from udabench.data.registry import dataset_names, get_dataset
from udabench.data.prepare import PrepareOptions, parse_size, prepare_dataset
from udabench.data.parallel import default_workers
from udabench.data.verify import verify_dataset


def default_data_root() -> Path:
    """The data root: ``[paths] data_root`` of udabench.toml, overridden by $UDABENCH_DATA."""
    try:
        from udabench.config import load_config
    except ImportError:  # the config module is optional for this command group
        return Path(os.environ.get("UDABENCH_DATA", "data")).expanduser()
    return Path(load_config().paths.data_root)


def _root(dataset: str, root: Path | None) -> Path:
    return root if root is not None else default_data_root() / layout(dataset).subdir


_dataset_arg = click.argument("dataset", metavar="DATASET")
_root_opt = click.option("--root", type=click.Path(path_type=Path), default=None,
                         help="The dataset folder (default: <data_root>/<dataset>).")
_workers_opt = click.option("--workers", type=click.IntRange(1), default=None,
                            help="Worker processes (default: the CPU count, at most 8).")


@click.group("data")
def data() -> None:
    """Check and prepare datasets on disk (udabench never downloads datasets)."""


@data.command("verify")
@_dataset_arg
@_root_opt
@click.option("--quick", is_flag=True, help="Headers only: skip CRCs, decoding and label values.")
@_workers_opt
def verify(dataset: str, root: Path | None, quick: bool, workers: int | None) -> None:
    """Check counts, sizes, encodings, label values, missing and mismatched pairs of DATASET."""
    console = Console()
    report = verify_dataset(dataset, _root(dataset, root), quick=quick,
                            workers=workers or default_workers(), console=console)
    console.print(report.table())
    report.raise_if_failed()
    warnings = len(report.problems)
    console.print(f"[green]{layout(dataset).title} at {escape(str(report.root))} passed "
                  f"verification[/]" + (f" with {warnings} warning(s) (see the table)" if warnings
                                        else ""), soft_wrap=True)


@data.command("prepare")
@_dataset_arg
@_root_opt
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where the manifest and cache go (default: <root>/udabench_prepared); point "
                   "runs at it with $UDABENCH_MANIFEST_<DATASET> when it is elsewhere.")
@click.option("--on-mismatch", type=click.Choice(["resize", "drop"]), default="resize",
              show_default=True, help="Training image/label size mismatch: resize the label "
                                      "(nearest) or drop the pair (validation labels keep their size).")
@click.option("--cache-size", default=None, metavar="WxH",
              help="Also write a resized training cache, e.g. 1280x720.")
@click.option("--checksum", is_flag=True,
              help="Re-read every file and record its sha256 (catches changes that keep the size "
                   "and modification time).")
@click.option("--force", is_flag=True, help="Check every file again, whatever the old manifest says.")
@_workers_opt
def prepare(dataset: str, root: Path | None, out: Path | None, on_mismatch: str,
            cache_size: str | None, checksum: bool, force: bool, workers: int | None) -> None:
    """Write the manifest of DATASET (pairs, sizes, defects, class pixel counts); resumable."""
    console = Console()
    opts = PrepareOptions(on_mismatch=on_mismatch,  # type: ignore[arg-type]
                          cache_size=parse_size(cache_size) if cache_size else None,
                          workers=workers or default_workers(), checksum=checksum)
    manifest = prepare_dataset(dataset, _root(dataset, root), out, opts, console, force=force)
    table = Table(title=f"udabench data prepare: {layout(dataset).title}", title_justify="left")
    table.add_column("status")
    table.add_column("pairs", justify="right")
    for status, n in manifest.counts.items():
        style = "green" if status in ("ok", "resized_label") else ("red" if n else "dim")
        table.add_row(f"[{style}]{status}", str(n))
    console.print(table)
    void = [e for e in manifest.entries if e.class_counts is not None and not any(e.class_counts)]
    if void:
        console.print(f"[yellow]{len(void)} labels have no valid pixel (all void), e.g. "
                      f"{escape(str(void[0].label))}; `udabench data verify` lists them",
                      soft_wrap=True)
    where = Path(out) if out is not None else Path(manifest.root) / "udabench_prepared"
    console.print(escape(f"manifest: {where / 'manifest.json'}")
                  + (f"; cache {opts.cache_size[0]}x{opts.cache_size[1]} under {where / 'cache'}"
                     if opts.cache_size else ""), soft_wrap=True)
    if out is not None:
        console.print(f"runs use it with {env_var(layout(dataset).name)}="
                      f"{escape(str((where / 'manifest.json').resolve()))}", soft_wrap=True)


@data.command("list")
def list_datasets() -> None:
    """The registered datasets: name, folder below the data root, layout and where to get them."""
    console = Console()
    table = Table(title="udabench datasets", title_justify="left")
    for column in ("name", "dataset", "splits", "expected layout (below its folder)"):
        table.add_column(column, overflow="fold")
    for name in dataset_names():
        spec = get_dataset(name)
        table.add_row(name, f"{spec.title} ({spec.url})", ", ".join(spec.splits),
                      escape(spec.tree(Path(f"<data_root>/{spec.subdir}"))))
    console.print(table)
