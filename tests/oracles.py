"""Independent implementations udabench is checked against (used only by tests)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest


def official_class_iou(pred_files: list[Path], gt_files: list[Path]) -> dict[str, float]:
    """Per-class IoU from the official cityscapesscripts pixel-level evaluator (labelId PNGs)."""
    ev = pytest.importorskip(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        reason="cityscapesscripts not installed (pip install '.[test]')",
    )
    args = ev.args
    args.quiet = True
    args.JSONOutput = False
    args.evalInstLevelScore = False
    with contextlib.redirect_stdout(io.StringIO()):
        result = ev.evaluateImgLists([str(p) for p in pred_files], [str(g) for g in gt_files], args)
    return {name: float(v) for name, v in result["classScores"].items()}
