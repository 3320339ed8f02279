"""Device choice, mixed precision and torchrun/DDP process groups."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from udabench.errors import UserError


@dataclass
class Placement:
    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    notice: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> tuple[int, int, int]:
    """Join the torchrun process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def shared_run_dir(run_dir: Any, world_size: int) -> Any:
    """Rank 0 made the run directory; every rank gets the same one."""
    if world_size <= 1:
        return run_dir
    box = [run_dir]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def rank0_first(world_size: int, is_main: bool):
    """Context: rank 0 runs the block first (e.g. generating data), the others after it."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        if world_size > 1 and not is_main:
            torch.distributed.barrier()
        yield
        if world_size > 1 and is_main:
            torch.distributed.barrier()

    return guard()


def select_device(requested: str, local_rank: int = 0) -> tuple[torch.device, str]:
    """'auto' takes CUDA when present, otherwise the CPU with a notice."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank), ""
        return torch.device("cpu"), "no CUDA device found: training on the CPU (slow for real benchmarks)"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{requested}' requested but CUDA is not available; use --device cpu")
        if requested == "cuda":
            return torch.device("cuda", local_rank), ""
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device '{requested}' does not exist ({torch.cuda.device_count()} GPUs)")
        return torch.device(requested), ""
    if requested == "cpu":
        return torch.device("cpu"), ""
    raise UserError(f"unknown device '{requested}'; use auto, cpu, cuda or cuda:N")


def place(requested: str) -> Placement:
    rank, world, local = init_distributed()
    device, notice = select_device(requested, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Placement(device, rank, world, local, notice)


def amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for train.amp."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return None, False
    if amp == "bf16":
        return torch.bfloat16, False
    if amp == "fp16":
        if device.type != "cuda":
            raise UserError("train.amp=fp16 needs a CUDA device; use bf16 or off on the CPU")
        return torch.float16, True
    raise UserError(f"unknown train.amp '{amp}'; use auto, off, bf16 or fp16")


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` for a block: where a thread pool or tiny tensors give
    the parallelism, extra OpenMP threads only contend for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
