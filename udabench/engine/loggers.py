"""Experiment trackers beside metrics.jsonl: TensorBoard and Weights & Biases (``train.loggers``).

metrics.jsonl is always written (resume truncates it to the checkpoint). The optional trackers get
the same scalars (losses, lr, it/s, evaluation mIoU and per-class IoU), a few prediction panels at
each evaluation, and the resolved configuration. Both are optional dependencies: asking for one
that is not installed is one line at ``preflight``, before any work. W&B defaults to offline mode
(``train.wandb_mode``): it runs without network; ``wandb sync`` uploads the run folder later.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from udabench.errors import UserError

LOGGERS = ("tensorboard", "wandb")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_loggers(names: tuple[str, ...] | list[str]) -> None:
    """Refuse (one line) a logger whose package is missing, before the run starts."""
    for name in names:
        package = _PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"train.loggers includes '{name}' but the {package} package is not "
                            f"installed; pip install {package} (or drop it from train.loggers)")


class TensorBoardLogger:
    def __init__(self, run_dir: Path, start_step: int, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events written after the checkpoint a resumed run restarts from
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=start_step if start_step else None)
        if not start_step:
            import json

            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def images(self, step: int, panels: dict[str, np.ndarray]) -> None:
        for key, image in panels.items():
            self.writer.add_image(key, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir: Path, run_id: str, name: str | None, project: str, mode: str,
                 config: dict[str, Any]):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb = wandb
        self.run = wandb.init(project=project, dir=str(run_dir), id=run_id, name=name or run_id,
                              mode=mode, config=config, resume="allow", reinit=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def images(self, step: int, panels: dict[str, np.ndarray]) -> None:
        self.run.log({k: self.wandb.Image(v) for k, v in panels.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The configured trackers of one run (empty on ranks other than 0)."""

    def __init__(self, loggers: list[Any]):
        self.loggers = loggers

    @property
    def wants_images(self) -> bool:
        return bool(self.loggers)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))
                  and np.isfinite(v)}
        for logger in self.loggers:
            logger.scalars(step, finite)

    def images(self, step: int, panels: dict[str, np.ndarray]) -> None:
        for logger in self.loggers:
            logger.images(step, panels)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_trackers(names: tuple[str, ...], run_dir: Path, start_step: int, config: dict[str, Any],
                  wandb_project: str, wandb_mode: str, is_main: bool) -> Trackers:
    if not is_main:
        return Trackers([])
    check_loggers(names)
    loggers: list[Any] = []
    for name in names:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir, start_step, config))
        elif name == "wandb":
            loggers.append(WandbLogger(run_dir, run_dir.name, config.get("name"), wandb_project,
                                       wandb_mode, config))
        else:  # the setting's declaration allows only LOGGERS
            raise UserError(f"unknown logger '{name}'; known: {', '.join(LOGGERS)}")
    return Trackers(loggers)
