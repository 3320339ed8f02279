import pytest

from udabench.errors import UserError
from udabench.registry import Registry


def make():
    reg = Registry("widget")

    @reg.register("alpha-one")
    class A:
        """First widget.

        More text."""

    reg.register("alpha-two", description="second")(object())
    reg.register("beta")(lambda: None)
    return reg, A


def test_register_get_and_description():
    reg, A = make()
    assert reg.get("alpha-one") is A
    assert reg.entries("alpha-one")[0].description == "First widget."
    assert "beta" in reg and "gamma" not in reg


def test_wildcard_listing_sorted():
    reg, _ = make()
    assert reg.names("alpha*") == ["alpha-one", "alpha-two"]
    assert reg.names() == ["alpha-one", "alpha-two", "beta"]


def test_unknown_name_lists_known_and_suggests():
    reg, _ = make()
    with pytest.raises(UserError) as e:
        reg.get("alpha-on")
    msg = str(e.value)
    assert "unknown widget 'alpha-on'" in msg and "did you mean 'alpha-one'" in msg
    assert "alpha-two" in msg and "beta" in msg


def test_double_registration_of_different_objects_fails():
    reg, _ = make()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("beta")(object())


def test_loaders_run_once_lazily():
    calls = []
    reg = Registry("thing", (lambda: calls.append(1),))
    assert calls == []
    reg.names()
    reg.names()
    assert calls == [1]


def test_the_registry_imports_none_of_its_users():
    """Built-ins come in through the same entry-point groups as plug-ins (pyproject.toml)."""
    import ast
    from pathlib import Path

    import udabench.registry as registry

    tree = ast.parse(Path(registry.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("udabench")} == {"udabench.errors"}
    assert "import_module" not in Path(registry.__file__).read_text()


def test_builtins_are_declared_as_entry_points():
    from importlib import metadata

    from udabench.registry import BENCHMARKS, METHODS, MODELS

    for group, registry, some in (("udabench.methods", METHODS, "clst"),
                                  ("udabench.models", MODELS, "resnet101"),
                                  ("udabench.benchmarks", BENCHMARKS, "gta2cs")):
        assert any(ep.value.startswith("udabench.") for ep in metadata.entry_points(group=group))
        assert registry.group == group and some in registry


def test_an_empty_group_says_udabench_is_not_installed():
    reg = Registry("gizmo", group="udabench.no-such-group")
    with pytest.raises(UserError, match="no built-in gizmos are registered.*pip install -e"):
        reg.names()
