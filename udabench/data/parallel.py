"""The work loop of `data verify` and `data prepare`: a progress bar and an ordered process pool."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")
R = TypeVar("R")


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


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
