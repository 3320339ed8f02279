"""Infinite, resumable, shardable loaders: one per domain.

Each epoch is a permutation drawn from (seed, domain, epoch); under DDP it is cut into
``world_size`` shards like ``DistributedSampler`` (truncated with drop_last, else padded by
wrapping). Every sample carries its own augmentation seed derived from (seed, domain, epoch,
position in the epoch permutation), so batches are identical for any ``num_workers``, and a
loader restored from ``state_dict()`` yields exactly the batches that would have come next.
"""
from __future__ import annotations

import atexit
import math
import multiprocessing
import multiprocessing.util  # registers its exit hook now, so _end_workers_at_exit runs before it
import random
import signal
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from udabench.data.datasets import sample_seed
from udabench.errors import DataError, UserError


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images/labels; ids stay a list; ``geometry`` becomes tensors (full_size [B,2],
    crop [B,4] as top,left,height,width, flip [B] bool)."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in ("image", "label"):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                ids = ", ".join(str(s.get("id")) for s in samples[:4])
                raise DataError(f"{key}s of one batch differ in size {sorted(shapes)} (ids {ids}); "
                                f"give the transform a fixed resize size or crop")
            out[key] = torch.stack(values)
        elif key == "id":
            out[key] = list(values)
        elif key == "geometry":
            out[key] = {
                "full_size": torch.tensor([v["full_size"] for v in values], dtype=torch.int64),
                "crop": torch.tensor([v["crop"] for v in values], dtype=torch.int64),
                "flip": torch.tensor([v["flip"] for v in values], dtype=torch.bool),
            }
        else:
            out[key] = default_collate(values)
    return out


class SampledClass(torch.utils.data.Dataset):
    """A dataset read through a method's sampler: key (index, aug_seed, class) -> the sample with
    ``sampled_class`` (the class the image was drawn for, e.g. by rare class sampling)."""

    supports_aug_seed = True

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.keyed = getattr(dataset, "supports_aug_seed", False)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        index, aug_seed, cls = key
        sample = self.dataset[(index, aug_seed)] if self.keyed else self.dataset[index]
        return {**sample, "sampled_class": cls}


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))


def leave_stop_signals_to_the_run(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every loader: a worker ignores SIGTERM/SIGUSR1. `sweep cancel`,
    scancel and Slurm's time-limit warning signal the whole process group; the run's main
    process answers by writing a checkpoint (exit 143) and then shuts its workers down itself. A
    worker that died of the signal first would fail the run instead. (Workers still exit when
    the main process is gone: PyTorch's worker loop watches its parent.)"""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@atexit.register
def _end_workers_at_exit() -> None:
    """At interpreter exit multiprocessing ends every daemonic child with SIGTERM and then waits
    for it; a loader still open then (an iterator something kept a reference to) has workers
    that ignore SIGTERM, and the wait would never end. Kill them first, as SIGTERM would have.
    (atexit runs this before multiprocessing's own hook, which was registered earlier.)"""
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children and hasattr(signal, "SIGCHLD"):  # PyTorch's SIGCHLD handler would raise for each
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join(timeout=5)


class _WorkerInit:
    """Seeds the global RNGs of each worker from the run seed (picklable for spawn)."""

    def __init__(self, seed: int, domain: str, rank: int):
        self.seed, self.domain, self.rank = seed, domain, rank

    def __call__(self, worker_id: int) -> None:
        leave_stop_signals_to_the_run(worker_id)
        s = sample_seed(self.seed, self.domain, self.rank, "worker", worker_id)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)


class _BatchKeys:
    """Endless batches of dataset keys from a starting (epoch, position); runs ahead of the
    consumer (prefetch), which is why the loader counts consumed batches itself."""

    def __init__(self, loader: "InfiniteLoader", epoch: int, position: int):
        self.loader, self.epoch, self.position = loader, epoch, position

    def __iter__(self) -> Iterator[list[Any]]:
        epoch, position, bs = self.epoch, self.position, self.loader.batch_size
        while True:
            keys = self.loader.epoch_keys(epoch)
            for b in range(position, self.loader.batches_per_epoch):
                yield keys[b * bs: (b + 1) * bs]
            epoch, position = epoch + 1, 0


def _one_line(exc: UserError) -> UserError:
    """A worker's error comes back with its traceback in the message; keep the original line."""
    text = str(exc)
    if "\n" not in text:
        return exc
    last = text.strip().splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return type(exc)(last[len(prefix):] if last.startswith(prefix) else last)


class InfiniteLoader:
    """Iterates batches forever. ``state_dict()`` = (epoch, position in batches of this rank)."""

    def __init__(self, dataset: Any, batch_size: int, seed: int, domain: str, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True,
                 pin_memory: bool = False, prefetch_factor: int = 2):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"invalid loader setup: batch_size={batch_size}, rank={rank}, "
                            f"world_size={world_size}")
        self.dataset, self.batch_size, self.seed, self.domain = dataset, batch_size, seed, domain
        self.num_workers, self.rank, self.world_size = num_workers, rank, world_size
        self.drop_last, self.pin_memory, self.prefetch_factor = drop_last, pin_memory, prefetch_factor
        n = len(dataset)
        self.per_rank = n // world_size if drop_last else math.ceil(n / world_size)
        self.batches_per_epoch = (self.per_rank // batch_size if drop_last
                                  else math.ceil(self.per_rank / batch_size))
        if self.batches_per_epoch == 0:
            raise DataError(f"{domain} dataset has {n} images, fewer than one batch of {batch_size} "
                            f"per process over {world_size} process(es); lower the batch size")
        self.keyed = getattr(dataset, "supports_aug_seed", False)
        self.epoch, self.position = 0, 0
        self._it: Iterator[dict[str, Any]] | None = None
        self.sampler: Any = None  # draws (indices, classes) instead of shuffling (set_sampler)

    def set_sampler(self, sampler: Any) -> None:
        """Draw each epoch's images with ``sampler.draw(n, generator) -> (indices, classes)``
        instead of a permutation (a method's rare class sampling); samples then carry
        ``sampled_class``. The draws follow (seed, domain, epoch): resume sees the same ones."""
        self.close()
        self.sampler = sampler
        self.dataset = SampledClass(self.dataset)
        self.keyed = True

    def epoch_keys(self, epoch: int) -> list[Any]:
        """This rank's dataset keys for ``epoch``: (index, aug_seed) or plain indices."""
        n = len(self.dataset)
        gen = torch.Generator()
        gen.manual_seed(sample_seed(self.seed, self.domain, "epoch", epoch))
        classes: list[int] | None = None
        if self.sampler is not None:
            drawn, drawn_classes = self.sampler.draw(n, gen)
            perm, classes = [int(i) for i in drawn], [int(c) for c in drawn_classes]
        else:
            perm = torch.randperm(n, generator=gen).tolist()
        positions = list(range(n))
        total = self.per_rank * self.world_size
        if total <= n:
            positions = positions[:total]
        else:  # pad by wrapping around, as DistributedSampler does without drop_last
            positions = (positions * math.ceil(total / n))[:total]
        mine = positions[self.rank::self.world_size]
        if classes is not None:
            return [(perm[p], sample_seed(self.seed, self.domain, epoch, p), classes[p]) for p in mine]
        if not self.keyed:
            return [perm[p] for p in mine]
        return [(perm[p], sample_seed(self.seed, self.domain, epoch, p)) for p in mine]

    def _start(self) -> Iterator[dict[str, Any]]:
        gen = torch.Generator()
        gen.manual_seed(sample_seed(self.seed, self.domain, self.rank, "loader"))
        extra = {"prefetch_factor": self.prefetch_factor} if self.num_workers > 0 else {}
        loader = DataLoader(
            self.dataset, batch_sampler=_BatchKeys(self, self.epoch, self.position),
            num_workers=self.num_workers, collate_fn=collate, pin_memory=self.pin_memory,
            worker_init_fn=_WorkerInit(self.seed, self.domain, self.rank), generator=gen, **extra,
        )
        return iter(loader)

    def __iter__(self) -> "InfiniteLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = self._start()
        try:
            batch = next(self._it)
        except UserError as exc:
            raise _one_line(exc) from None
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "domain": self.domain, "batch_size": self.batch_size, "world_size": self.world_size,
                "rank": self.rank, "dataset_len": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "domain", "batch_size", "world_size", "dataset_len"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise UserError(f"cannot resume the {self.domain} loader: checkpoint has {key}="
                                f"{state[key]!r}, this run has {mine!r}; resume with the same setup")
        if not 0 <= int(state["position"]) < self.batches_per_epoch:
            raise UserError(f"cannot resume the {self.domain} loader: position {state['position']} "
                            f"is outside 0..{self.batches_per_epoch - 1}")
        self.close()
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def close(self) -> None:
        """Stop the workers (a new iterator starts on the next batch)."""
        self._it = None

    def __repr__(self) -> str:
        return (f"InfiniteLoader({self.domain}, batch {self.batch_size}, {self.batches_per_epoch} "
                f"batches/epoch, rank {self.rank}/{self.world_size}, epoch {self.epoch}, "
                f"position {self.position})")


def dist_rank_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
