"""docs/extending.md: its metric example runs and is right, and its code excerpts are the example
plug-in's actual code (the plug-in itself is installed and run by tests/test_example_plugin.py)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"
PLUGIN = REPO / "examples" / "udabench-example-plugin"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(DOC.read_text()) if lang == kind]


def code_lines(text: str) -> list[str]:
    """Stripped code lines, comments (whole-line or trailing) left out."""
    out = [line.split("  #")[0].strip() for line in text.splitlines()]
    return [line for line in out if line and not line.startswith("#")]


def metric_namespace() -> dict:
    (block,) = [b for b in blocks("python") if "def frequency_weighted_iou" in b]
    namespace: dict = {}
    exec(compile(block, f"{DOC}:metric example", "exec"), namespace)  # its asserts run here
    return namespace


def test_the_metric_example_runs_and_agrees_with_a_plain_loop(tmp_path):
    ns = metric_namespace()
    rng = np.random.default_rng(0)
    matrices = rng.integers(0, 50, size=(3, 19, 19))
    matrices[:, 5, :] = 0  # a class absent from the ground truth ...
    matrices[:, :, 5] = 0  # ... and from the predictions: no union, left out
    total = matrices.sum(0).astype(float)
    expected = 0.0
    for c in range(19):
        union = total[c].sum() + total[:, c].sum() - total[c, c]
        if union:
            expected += total[c].sum() / total.sum() * total[c, c] / union
    assert ns["frequency_weighted_iou"](total) == pytest.approx(expected, rel=1e-12)
    np.savez(tmp_path / "per_image.npz", ids=np.array(["a", "b", "c"]), matrices=matrices)
    assert ns["run_fwiou"](tmp_path) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("marker,source", [
    ('@register_method("example-flip-consistency"', "src/udabench_example/flip_consistency.py"),
    ("class ACDC(DatasetSpec)", "src/udabench_example/acdc.py"),
    ('name="example-minicity-strong"', "src/udabench_example/benchmarks.py"),
    ('[project.entry-points."udabench.methods"]', "pyproject.toml"),
])
def test_excerpts_are_the_plugin_code(marker, source):
    (block,) = [b for b in blocks("python") + blocks("toml") if marker in b]
    actual = set(code_lines((PLUGIN / source).read_text()))
    missing = [line for line in code_lines(block) if line not in actual]
    assert not missing, f"docs/extending.md shows lines that {source} does not have: {missing}"
