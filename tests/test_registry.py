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
