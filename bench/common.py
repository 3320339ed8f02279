"""Shared helpers for the benchmark scripts: timing and a header naming the machine."""
from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np
import torch


def machine_line() -> str:
    import torchvision

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpu(s), "
        f"torch threads {torch.get_num_threads()}, python {platform.python_version()}, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {np.__version__}"
    )


def best_time(fn: Callable[[], object], repeat: int = 5, number: int = 3) -> float:
    """Best mean seconds per call over ``repeat`` rounds of ``number`` calls (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best
