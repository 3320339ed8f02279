"""Mean teachers: an EMA copy of the student (DACS-style self-training and its descendants)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` (its parameters never receive gradients)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def ema_alpha(step: int, momentum: float) -> float:
    """DACS's warm-up: alpha = min(1 - 1/(step+1), momentum), so early teachers follow fast."""
    return min(1.0 - 1.0 / (step + 1), momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha teacher + (1 - alpha) student, BatchNorm running statistics included."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    for tm, sm in zip(teacher.modules(), student.modules()):
        if isinstance(tm, nn.modules.batchnorm._BatchNorm) and tm.running_mean is not None:
            tm.running_mean.mul_(alpha).add_(sm.running_mean, alpha=1.0 - alpha)
            tm.running_var.mul_(alpha).add_(sm.running_var, alpha=1.0 - alpha)
            tm.num_batches_tracked.copy_(sm.num_batches_tracked)
