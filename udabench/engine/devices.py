"""Device choice, mixed precision and torchrun/DDP process groups."""
from __future__ import annotations

import atexit
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


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[07-09,12],cpu1`` -> ``gpu07``."""
    head, depth = "", 0
    for ch in nodelist.strip():
        if ch == "," and depth == 0:
            break
        depth += (ch == "[") - (ch == "]")
        head += ch
    if "[" not in head:
        return head
    prefix, _, ranges = head.partition("[")
    first = ranges.rstrip("]").split(",")[0].split("-")[0]
    return prefix + first + head[head.index("]") + 1:]


def slurm_to_torchrun() -> None:
    """``srun -n N udabench run ...``: torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) from Slurm's, unless torchrun (or the user) set them. Only a job
    step (srun) counts: a batch script's SLURM_NTASKS describes the job, not this process."""
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1)
    if "WORLD_SIZE" in os.environ or tasks <= 1 or "SLURM_PROCID" not in os.environ:
        return
    local = int(os.environ.get("SLURM_LOCALID", "0"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # srun --gpus-per-task shows each task only its own GPU(s): index them from 0
    device_index = local % gpus if gpus else local
    job = int(os.environ.get("SLURM_JOB_ID") or 0)
    os.environ.update({
        "WORLD_SIZE": str(tasks), "RANK": os.environ["SLURM_PROCID"], "LOCAL_RANK": str(device_index),
        "MASTER_ADDR": os.environ.get("MASTER_ADDR") or first_host(
            os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or "127.0.0.1"),
        # one port per job, so two multi-task jobs sharing a node do not meet
        "MASTER_PORT": os.environ.get("MASTER_PORT") or str(20000 + job % 20000),
    })


def init_distributed() -> tuple[int, int, int]:
    """Join the process group when launched by torchrun, or by srun with several tasks (NCCL on
    CUDA, gloo on CPU)."""
    slurm_to_torchrun()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        atexit.register(leave_process_group)
    return torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def leave_process_group() -> None:
    """Destroy the process group before the interpreter exits. Left to static destruction, a
    gloo group's threads may still be running and the process aborts ("terminate called without an
    active exception", exit 134: measured in 3 of 12 two-process torchrun launches) after its work
    finished, so a completed run would be reported as failed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway; a failed clean-up must not mask the result
            pass


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


CHANNELS_LAST_DEVICES = ("cuda",)  # where NHWC pays off (tests add "cpu" to check the plumbing)


def runs_nhwc(channels_last: bool, device: torch.device) -> bool:
    """Whether a run with ``train.channels_last`` runs NHWC on this device (CUDA only)."""
    return bool(channels_last) and device.type in CHANNELS_LAST_DEVICES


def lay_out(module: torch.nn.Module, channels_last: bool, device: torch.device) -> bool:
    """Lay a run's networks out NHWC when ``train.channels_last`` asks and the device is CUDA;
    returns whether it did. Training, the run's own evaluations and every later re-evaluation of
    the run (``udabench eval``, ``predict``, the selftest's export) call this one function: on CUDA
    the two layouts run different bf16 kernels whose rounding moves some pixels' argmax, so an
    NCHW re-evaluation of an NHWC run re-scored up to 0.015 IoU points away from its result.json
    (measured on an H200 by ``udabench selftest``)."""
    if not runs_nhwc(channels_last, device):
        return False
    module.to(memory_format=torch.channels_last)
    return True


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
