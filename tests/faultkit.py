"""Helpers for the fault-injection tests: tiny configs, real subprocess runs, kills, snapshots."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from click.testing import CliRunner
from udabench.engine.devices import torch_threads
from tests.helpers import tiny_toml

REPO = Path(__file__).resolve().parents[1]

# MiniCity params shared by every fault test: one generated tree per pytest session.
MINICITY = {"height": 48, "width": 96, "n_source": 6, "n_target_train": 6, "n_target_val": 6}


def write_toml(folder: Path, data: Path, iters: int = 6, checkpoint_every: int = 2,
               train_size: tuple[int, int] = (64, 32), eval_size: tuple[int, int] = (64, 32)) -> Path:
    """A udabench.toml for a tiny MiniCity run in ``folder`` (sizes are (W, H))."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "udabench.toml"
    path.write_text(tiny_toml(data, folder / "runs", iters=iters, log_every=1,
                              checkpoint_every=checkpoint_every, train_size=train_size,
                              eval_size=eval_size, n_val=MINICITY["n_target_val"]))
    return path


def generate_data(data: Path) -> None:
    """Generate the shared MiniCity once, so concurrent subprocess runs only read it."""
    from udabench.minicity import ensure_minicity
    from udabench.minicity.params import MiniCityParams

    ensure_minicity(data, MiniCityParams(**MINICITY), sources=("gta5", "synthia"))


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), COLUMNS="200")
    e.pop("UDABENCH_DATA", None)
    return e


def spawn(cwd: Path, *args: str, log: str = "log") -> subprocess.Popen:
    """``python -m udabench ARGS`` in its own session (so a kill reaches nothing else)."""
    out = open(cwd / f"{log}.out", "wb")
    return subprocess.Popen([sys.executable, "-m", "udabench", *args], cwd=cwd, env=env(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_when(proc: subprocess.Popen, ready: Callable[[], bool], confirm: Callable[[], bool],
              timeout: float = 180, poll: float = 0.0005) -> bool:
    """Freeze ``proc`` (SIGSTOP) as soon as ``ready()`` holds, then SIGKILL it if ``confirm()``
    holds on the frozen state (the moment is proven, not guessed), else let it go on (SIGCONT).
    False when the process ended before a confirmed moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.killpg(proc.pid, signal.SIGSTOP)
            if confirm():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.02)  # let it move on before looking again
        time.sleep(poll)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise AssertionError("the kill moment did not come within the timeout")


def tmp_files(folder: Path, pattern: str) -> list[Path]:
    return list(folder.glob(pattern)) if folder.is_dir() else []


def run_dir_in(base: Path) -> Path | None:
    """The one run directory under ``base`` (any depth), or None before it exists."""
    found = [p.parent for p in base.glob("**/config.json")]
    assert len(found) <= 1, found
    return found[0] if found else None


def metric_steps(run: Path) -> list[int]:
    f = run / "metrics.jsonl"
    if not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        try:
            out.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a line being written right now
    return out


def checkpoint_step(run: Path) -> int | None:
    from udabench.engine.checkpoint import load_checkpoint

    ckpt = run / "checkpoints" / "last.pt"
    return int(load_checkpoint(ckpt)["step"]) if ckpt.exists() else None


def assert_same_result(a: Path, b: Path) -> None:
    """Bit-for-bit: result IoUs, the per-image matrices, the final checkpoint's method tensors and
    the logged losses."""
    from udabench.engine.checkpoint import load_checkpoint
    import numpy as np

    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["iou"] == rb["iou"] and ra["miou"] == rb["miou"] and ra["iters"] == rb["iters"]
    pa, pb = np.load(a / "per_image.npz"), np.load(b / "per_image.npz")
    assert np.array_equal(pa["matrices"], pb["matrices"])
    ma = load_checkpoint(a / "checkpoints" / "last.pt")["method"]
    mb = load_checkpoint(b / "checkpoints" / "last.pt")["method"]
    assert ma.keys() == mb.keys()
    for k in ma:
        if torch.is_tensor(ma[k]):
            assert torch.equal(ma[k], mb[k]), k
        elif isinstance(ma[k], dict):  # extra state (CLST ensemble checksum, CBST round)
            assert ma[k] == mb[k], k

    def losses(d: Path) -> list[dict]:
        lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in l.items() if k != "it_s"} for l in lines]

    assert losses(a) == losses(b)


# -- in-process CLI and file snapshots ---------------------------------------------------------
def invoke(*args: str):
    from udabench.cli import main

    return CliRunner().invoke(main, list(args))



def one_thread():
    """torch on one thread for in-process runs: on a busy 2-core machine two OpenMP threads
    make a tiny step ~50x slower (spin-waiting), and subprocess runs use one thread too."""
    return torch_threads(1)

def snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` with its bytes (to prove nothing was touched)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
