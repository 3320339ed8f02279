"""The method kit is the only thing a method file imports from udabench (issue 15)."""
from __future__ import annotations

import ast
from pathlib import Path

import torch

from udabench.method import Method, cross_entropy, supervised_loss

METHODS_DIR = Path(__file__).resolve().parents[1] / "methods"
# A plug-in's method file keeps the same rule (docs/extending.md): the worked example's is checked.
PLUGIN_METHODS = [Path(__file__).resolve().parents[1] / "examples" / "udabench-example-plugin" / "src"
                  / "udabench_example" / "flip_consistency.py"]
# What a method file may import: the kit, the standard library, and the numeric libraries.
ALLOWED_ROOTS = {"torch", "numpy", "__future__", "dataclasses", "typing", "math", "os", "pathlib",
                 "copy", "functools", "itertools", "collections", "random"}


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def test_method_files_import_only_the_kit():
    files = [p for p in METHODS_DIR.glob("*.py") if p.name != "__init__.py"]
    assert len(files) >= 5 and all(p.is_file() for p in PLUGIN_METHODS)
    files += PLUGIN_METHODS
    for path in files:
        for name in imports_of(path):
            assert not name.startswith("."), f"{path.name} imports a sibling method ({name})"
            root = name.split(".")[0]
            if root == "udabench":
                assert name == "udabench.method", f"{path.name} imports {name}: use udabench.method"
            else:
                assert root in ALLOWED_ROOTS, f"{path.name} imports {name}"


class _Net(torch.nn.Module):
    def forward(self, x):
        assert x.dtype == torch.float32 and float(x.max()) <= 1.0
        return {"out": x[:, :2] * 10, "aux": None, "feat": x}


def test_segment_scales_uint8_once_and_cross_entropy_is_zero_without_labels():
    m = Method(_Net(), None, None)
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = m.segment(images)
    assert torch.equal(out["out"], torch.full((1, 2, 2, 2), 10.0))
    assert torch.equal(m.segment(images.float() / 255)["out"], out["out"])  # floats pass through
    void = torch.full((1, 2, 2), 255, dtype=torch.uint8)
    loss = cross_entropy(out["out"].requires_grad_(), void)
    assert loss.item() == 0.0 and loss.requires_grad  # not NaN, graph kept
    # one labelled pixel: exactly its CE (logits 10, 10 -> log 2)
    label = void.clone()
    label[0, 0, 0] = 1
    assert abs(cross_entropy(out["out"], label).item() - float(torch.log(torch.tensor(2.0)))) < 1e-6
    loss, logs, _ = supervised_loss(m, {"image": images, "label": label}, aux_weight=0.1)
    assert set(logs) == {"ce"}  # no aux head, no aux term


def test_registration_names_the_config_table():
    from dataclasses import dataclass

    import pytest

    from udabench.method import OptimConfig, register_method
    from udabench.registry import METHODS

    @dataclass
    class PlainConfig(OptimConfig):
        pass

    class Plain(Method):
        Config = PlainConfig

    try:
        register_method("kit-test-plain")(Plain)
        assert PlainConfig.WHERE == "methods.kit-test-plain"  # set from the registered name

        @dataclass
        class Wrong(OptimConfig):
            WHERE = "methods.something-else"

        class Other(Method):
            Config = Wrong

        with pytest.raises(ValueError, match="WHERE is 'methods.something-else'"):
            register_method("kit-test-other")(Other)
    finally:
        METHODS._entries.pop("kit-test-plain", None)


def test_a_method_without_training_step_is_refused_before_anything_is_built(tmp_path):
    """A plug-in that forgot training_step fails while planning (one line, no run
    directory, non-zero exit), not at step 1 after the data and the model were built."""
    from dataclasses import dataclass

    from click.testing import CliRunner

    from udabench.cli import main
    from udabench.method import OptimConfig, register_method
    from udabench.registry import METHODS

    @dataclass
    class NoStepConfig(OptimConfig):
        pass

    class NoStep(Method):
        Config = NoStepConfig

    try:
        register_method("kit-test-no-step")(NoStep)
        result = CliRunner().invoke(main, ["run", "kit-test-no-step", "--benchmark", "minicity-gta2cs",
                                           "--out", str(tmp_path / "out")])
    finally:
        METHODS._entries.pop("kit-test-no-step", None)
    assert result.exit_code != 0, result.output
    assert "defines no training_step" in result.output and "NoStep" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
