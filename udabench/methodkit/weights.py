"""Loading a segmenter's weights from a file or from a finished run (``train.init_from``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from udabench.checkpoints import load_checkpoint
from udabench.errors import UserError


def segmenter_state(state: dict[str, Any]) -> dict[str, Any]:
    """The segmenter's tensors in a udabench run checkpoint (``method`` -> ``segmenter.*``), or the
    state dict itself when it is a plain segmenter state dict."""
    if "method" in state and isinstance(state["method"], dict):
        state = state["method"]
    inner = {k[len("segmenter."):]: v for k, v in state.items() if k.startswith("segmenter.")}
    return inner or state


def load_segmenter_weights(segmenter: nn.Module, path: Path, where: str) -> None:
    """Load a udabench checkpoint (or a segmenter state dict file) into ``segmenter``, strictly:
    a file that does not fit is one UserError naming ``where`` (the setting) and the first
    mismatch."""
    state = segmenter_state(load_checkpoint(Path(path)))
    try:
        segmenter.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])
        raise UserError(f"{where}: {path} does not fit this segmenter ({detail[:200]}); "
                        "start from a run with the same network (model.*)") from None
