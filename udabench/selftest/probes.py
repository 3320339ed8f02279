"""Timing and memory probes put around an ordinary run from the outside (engine code unchanged).

``StepProbe`` wraps, for the duration of a ``with`` block, four methods at class level:
``Trainer.train_step`` (one optimiser step), ``InfiniteLoader.__next__`` (the time a step waits
for its next batch: the input pipeline), and CLST's ``TemporalEnsemble.update`` / ``.lookup``
(the file-backed ensemble's write and read). Each call's seconds are added to the step in
progress; calls outside a step (none in a normal run) are not counted. The originals are put back
on exit, whatever happened. On CUDA the ensemble calls are bracketed by synchronisations, so that
they measure the ensemble's own work and not the GPU work queued before them.

The probe also remembers the loaders it saw, so that ``close_loaders`` can stop their worker
processes when the run is over. A dropped ``InfiniteLoader`` is part of a reference cycle (its
batch sampler points back at it), so only the cyclic garbage collector frees it, and torch's
worker shutdown from there waits 5 s per worker before killing it: 10 s per loader per method.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; on
the CPU the peak resident set size of this process (``getrusage``'s ``ru_maxrss``), reset before
each method by writing 5 to ``/proc/self/clear_refs`` (Linux; where that is refused the figure is
the process peak so far and is marked so). DataLoader worker processes are not included.
"""
from __future__ import annotations

import functools
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from udabench.data.loaders import InfiniteLoader
from udabench.engine.trainer import Trainer
from udabench.ensemble import TemporalEnsemble


@dataclass
class StepTimes:
    seconds: float = 0.0  # the whole optimiser step
    data: float = 0.0  # waiting for batches (all domains, all micro-batches)
    ensemble_write: float = 0.0  # TemporalEnsemble.update
    ensemble_read: float = 0.0  # TemporalEnsemble.lookup
    ensemble_calls: int = 0


@dataclass
class StepProbe:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    steps: list[StepTimes] = field(default_factory=list)
    loaders: list[InfiniteLoader] = field(default_factory=list)
    _current: StepTimes | None = None
    _saved: list[tuple[type, str, Any]] = field(default_factory=list)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, cls: type, name: str, make: Callable[[Callable], Callable]) -> None:
        original = cls.__dict__[name]
        self._saved.append((cls, name, original))
        setattr(cls, name, functools.wraps(original)(make(original)))

    def __enter__(self) -> "StepProbe":
        probe = self

        def step(original):
            def timed(trainer, *args, **kwargs):
                probe._current = current = StepTimes()
                start = time.perf_counter()
                try:
                    return original(trainer, *args, **kwargs)
                finally:
                    current.seconds = time.perf_counter() - start
                    probe.steps.append(current)
                    probe._current = None
            return timed

        def inside(attribute: str, sync: bool):
            def make(original):
                def timed(obj, *args, **kwargs):
                    if isinstance(obj, InfiniteLoader) and not any(obj is l for l in probe.loaders):
                        probe.loaders.append(obj)
                    current = probe._current
                    if current is None:
                        return original(obj, *args, **kwargs)
                    if sync:
                        probe._sync()
                    start = time.perf_counter()
                    try:
                        return original(obj, *args, **kwargs)
                    finally:
                        if sync:
                            probe._sync()
                        setattr(current, attribute, getattr(current, attribute)
                                + time.perf_counter() - start)
                        if attribute.startswith("ensemble"):
                            current.ensemble_calls += 1
                return timed
            return make

        try:
            self._wrap(Trainer, "train_step", step)
            self._wrap(InfiniteLoader, "__next__", inside("data", sync=False))
            self._wrap(TemporalEnsemble, "update", inside("ensemble_write", sync=True))
            self._wrap(TemporalEnsemble, "lookup", inside("ensemble_read", sync=True))
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        while self._saved:
            cls, name, original = self._saved.pop()
            setattr(cls, name, original)

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def close_loaders(self) -> None:
        """Stop the worker processes of every loader the run used (``InfiniteLoader.close``)."""
        while self.loaders:
            self.loaders.pop().close()


# -- memory ---------------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak; False when the CPU peak cannot be reset (it then covers the process)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # 5 = reset the peak RSS (Linux >= 4.0)
            fh.write("5")
        return True
    except OSError:
        return False


def peak_memory(device: torch.device) -> int:
    """Bytes: CUDA max allocated, or this process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def memory_kind(device: torch.device, reset_ok: bool) -> str:
    if device.type == "cuda":
        return "cuda_max_allocated"
    return "cpu_peak_rss" if reset_ok else "cpu_peak_rss_process"
