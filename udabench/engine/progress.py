"""Training progress for people: a rich bar on a terminal, plain lines everywhere else.

A cluster job's log (Slurm, nohup, CI) is not a terminal: there the trainer prints one line every
``log_every`` steps (step, losses, lr, it/s, ETA), flushed, so the log is readable while it runs.
"""
from __future__ import annotations

import sys
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def progress_line(step: int, total: int, logs: dict[str, float], speed: float) -> str:
    """``step 20/300 | loss/model 1.234 | lr 0.00950 | 2.31 it/s | ETA 2m01s``."""
    parts = [f"step {step}/{total}"]
    parts += [f"{k} {v:.4g}" for k, v in logs.items() if k.startswith("loss/")]
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.3g}")
    parts.append(f"{speed:.2f} it/s")
    if speed > 0 and step < total:
        parts.append(f"ETA {_duration((total - step) / speed)}")
    return " | ".join(parts)


class TrainProgress:
    """Context manager: ``advance(step)`` every step, ``report(step, logs, speed)`` every log step."""

    def __init__(self, total: int, start: int, enabled: bool, plain: bool | None = None):
        self.total, self.enabled = total, enabled
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self._bar: Progress | None = None
        self._task: Any = None
        self._start = start

    def __enter__(self) -> "TrainProgress":
        if self.enabled and not self.plain:
            columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TextColumn("{task.fields[speed]}"),
                       TimeRemainingColumn())
            self._bar = Progress(*columns)
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self._start,
                                            info="", speed="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def report(self, step: int, logs: dict[str, float], speed: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            info = " ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in logs.items() if k.startswith("loss/"))
            self._bar.update(self._task, info=info, speed=f"{speed:.2f} it/s")
        else:
            print(progress_line(step, self.total, logs, speed), flush=True)
