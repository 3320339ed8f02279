"""The run directory: ``runs/<benchmark>/<method>/<run-id>/`` and everything written into it.

config.json (resolved settings), env.json (versions, git revision, device, world size),
metrics.jsonl (one line per log step), checkpoints/last.pt, result.json, per_image.npz, and a
lock file held while a process trains here, so a second ``udabench run`` on the same directory refuses.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udabench import __version__
from udabench.engine.checkpoint import atomic_write_bytes
from udabench.errors import UserError


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None


def git_revision() -> str:
    """The udabench source revision when run from a checkout, else 'unknown'."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists() or shutil.which("git") is None:
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    rev = out.stdout.strip() or "unknown"
    return rev + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    import timm
    import torchvision

    env = {
        "udabench": __version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": world_size,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def new_run_id(seed: int, config_hash: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-s{seed}-{config_hash[:6]}"


@dataclass
class RunDir:
    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        """The best checkpoint by validation mIoU: target-label model selection, marked as such."""
        return self.path / "checkpoints" / "best.pt"

    def checkpoint_at(self, step: int) -> Path:
        return self.path / "checkpoints" / f"iter_{step}.pt"

    def periodic_checkpoints(self) -> list[Path]:
        """iter_N.pt files, oldest first."""
        found = self.path.glob("checkpoints/iter_*.pt")
        return sorted(found, key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else -1)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def result_file(self) -> Path:
        return self.path / "result.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def scratch(self) -> Path:
        return self.path / "state"

    def create(self) -> "RunDir":
        """Make the directories; a read-only or unwritable output folder is a UserError now."""
        try:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            self.scratch.mkdir(exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(
                f"cannot write the run directory {self.path} ({exc.strerror}); "
                "choose a writable --out or fix its permissions"
            ) from None
        return self

    def lock(self) -> Any:
        """Hold an exclusive lock for the life of the training process, or refuse."""
        handle = open(self.path / "run.lock", "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(
                f"run directory {self.path} is in use by another udabench process; "
                "wait for it to finish or use another run directory"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        return handle

    def started(self) -> bool:
        """Whether training wrote anything (a log line, a checkpoint or a result)."""
        return any(p.exists() for p in (self.metrics_file, self.checkpoint, self.result_file))

    def discard_unstarted(self) -> bool:
        """Delete a run directory this process created if the run failed before training wrote
        anything (e.g. its dataset is missing), so failed starts leave no half-made run behind."""
        if self.started():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        return True

    def remove_stale_temporaries(self) -> None:
        """Delete the temporary files of a writer killed mid-write (call with the lock held: the
        writer is gone). A killed checkpoint write would otherwise leave a checkpoint-sized file."""
        for folder in (self.path, self.path / "checkpoints"):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop log lines written after the checkpoint so the log matches the run."""
        if not self.metrics_file.exists():
            return
        keep = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                step = json.loads(line).get("step", 0)
            except ValueError:  # a line cut short (full disk, crash): dropped, logged again
                continue
            if step <= after_step:
                keep.append(line)
        atomic_write_bytes(self.metrics_file, ("\n".join(keep) + ("\n" if keep else "")).encode())

    def save_per_image(self, ids: list[str], matrices: list[np.ndarray]) -> None:
        import io

        buffer = io.BytesIO()
        stack = np.stack(matrices) if matrices else np.zeros((0, 19, 19), np.int64)
        np.savez_compressed(buffer, ids=np.array(ids, dtype=str), matrices=stack)
        atomic_write_bytes(self.path / "per_image.npz", buffer.getvalue())
