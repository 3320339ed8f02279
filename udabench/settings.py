"""Declared settings: every configurable field says which values it accepts, and one function
checks them all with one error format.

A config dataclass declares its fields with :func:`setting`::

    @dataclass
    class MyConfig(Settings):
        WHERE: ClassVar[str] = "methods.mine"
        tau: float = setting(0.1, gt=0, doc="temperature of the contrastive softmax")
        mode: str = setting("a", choices=("a", "b"))

``Settings.__post_init__`` runs :func:`check_settings`, so a value that cannot work is refused
when the config is built (from udabench.toml, ``--set`` or a saved config.json), long before any
data is read. Cross-field rules go in an optional ``check(self)`` method. The declarations also
let tests generate an invalid value for *every* key (:func:`invalid_values`), so a new setting is
covered without editing the tests.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, Iterator

from udabench.errors import ConfigError


@dataclass(frozen=True)
class Allowed:
    """What one setting accepts, beyond its type (which the config loader checks)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    min_len: int | None = None  # sequences
    max_len: int | None = None
    item: "Allowed | None" = None  # rule for each item of a sequence
    nonempty: bool = False  # strings
    free: bool = False  # any value of the type is valid (declared on purpose)

    def problem(self, value: Any) -> bool:
        """True when ``value`` breaks the rule (None is judged by the type, not here)."""
        if value is None or self.free:
            return False
        if self.choices is not None:
            return value not in self.choices
        if isinstance(value, (list, tuple)):
            if self.min_len is not None and len(value) < self.min_len:
                return True
            if self.max_len is not None and len(value) > self.max_len:
                return True
            return self.item is not None and any(self.item.problem(v) for v in value)
        if isinstance(value, str):
            return self.nonempty and not value.strip()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return True
        return ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))

    def describe(self) -> str:
        if self.free:
            return "any value"
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = []
        for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)):
            if bound is not None:
                parts.append(f"{op} {bound:g}")
        text = " and ".join(parts)
        if self.min_len is not None or self.max_len is not None or self.item is not None:
            lo, hi = self.min_len, self.max_len
            count = (f"exactly {lo}" if lo == hi and lo is not None else
                     f"{lo} to {hi}" if lo is not None and hi is not None else
                     f"at least {lo}" if lo is not None else f"at most {hi}" if hi is not None else "")
            each = f", each {self.item.describe()}" if self.item is not None else ""
            return f"a list of {count + ' ' if count else ''}values{each}".replace("  ", " ")
        if self.nonempty:
            return "a non-empty string"
        return f"a finite number {text}" if text else "a finite number"


# What a recipe's number counts, where a benchmark of another size must rescale it (MiniCity runs
# every recipe in 300 iterations at a quarter of the real resolution): "iterations" (a count of
# training steps: a warm-up), "per_iteration" (a decay applied once per step: an EMA momentum),
# "pixels" (a length at the real protocol's training resolution: a crop side), "rate" (a learning
# rate: a short budget takes larger steps).
UNITS = ("", "iterations", "per_iteration", "pixels", "rate")


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, doc: str = "",
            unit: str = "", **rule: Any) -> Any:
    """A dataclass field with its valid values declared (see :class:`Allowed`) and, for a number
    a benchmark of another size rescales, its ``unit`` (see ``UNITS``)."""
    if unit not in UNITS:
        raise ValueError(f"setting unit {unit!r}: expected one of {UNITS}")
    allowed = Allowed(**rule)
    kwargs: dict[str, Any] = {"metadata": {"allowed": allowed, "doc": doc, "unit": unit}}
    if default_factory is not MISSING:
        kwargs["default_factory"] = default_factory
    elif isinstance(default, (list, dict, set)):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
    else:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def allowed_of(f: dataclasses.Field) -> Allowed | None:
    return f.metadata.get("allowed")


def unit_of(f: dataclasses.Field) -> str:
    return f.metadata.get("unit", "")


def _shown(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _wrong_type(value: Any, tp: Any) -> str | None:
    """What a scalar field expected when ``value`` is not of its type (None = fine or not scalar).
    The config loader converts TOML values; this catches configs built directly in Python."""
    base = _base_type(tp)
    if value is None or base not in _SCALARS:
        return None
    ok = (isinstance(value, bool) if base is bool else
          isinstance(value, int) and not isinstance(value, bool) if base is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if base is float else
          isinstance(value, str))
    return None if ok else _SCALARS[base]


def check_settings(obj: Any, where: str) -> None:
    """Raise one ConfigError line for the first field of ``obj`` outside its declared values."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        allowed = allowed_of(f)
        if allowed is None or not f.init:
            continue
        value = getattr(obj, f.name)
        expected = _wrong_type(value, hints.get(f.name))
        if expected:
            raise ConfigError(f"{where}.{f.name}: expected {expected}, got {value!r}")
        if allowed.problem(value):
            raise ConfigError(f"{where}.{f.name} = {_shown(value)} is not allowed: expected "
                              f"{allowed.describe()}")
    check = getattr(obj, "check", None)
    if callable(check):
        check()


class Settings:
    """Mix-in for config dataclasses: validates every declared field on construction.

    ``WHERE`` is the key prefix users write (``train``, ``model``, ``methods.clst``) so that the
    message names exactly what to change.
    """

    WHERE: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        check_settings(self, self.WHERE)

    def fail(self, key: str, message: str) -> ConfigError:
        """A ConfigError for a cross-field rule, in the same format as the declared ones."""
        return ConfigError(f"{self.WHERE}.{key} = {_shown(getattr(self, key))} is not allowed: {message}")


# --- for tests and documentation: every key and a value it must refuse -------------------------


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(arms[0]) if arms else Any
    return tp


def _breaking(allowed: Allowed, tp: Any) -> Any:
    """A value of the right type that the rule refuses (None when the rule refuses nothing)."""
    base = _base_type(tp)
    origin = typing.get_origin(base)
    if allowed.free:
        return None
    if allowed.choices is not None:
        if typing.get_origin(base) is typing.Literal:
            return "not-a-choice"
        if base is int:
            return max(c for c in allowed.choices if isinstance(c, int)) + 1000
        return "not-a-choice"
    if origin in (tuple, list):
        if allowed.min_len:
            return []
        if allowed.max_len is not None:
            return [1.0] * (allowed.max_len + 1)
        if allowed.item is not None:
            inner = typing.get_args(base)[0] if typing.get_args(base) else float
            bad = _breaking(allowed.item, inner)
            return None if bad is None else [bad]
        return None
    if base is str:
        return "" if allowed.nonempty else None
    if base in (int, float):
        for bound, delta in ((allowed.ge, -1), (allowed.gt, 0), (allowed.le, 1), (allowed.lt, 0)):
            if bound is not None:
                value = bound + delta
                return int(value) if base is int else float(value)
    return None


def invalid_values(cls: type) -> Iterator[tuple[str, Any]]:
    """(field name, a value the declaration refuses) for every declared field of ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        allowed = allowed_of(f)
        if allowed is None or not f.init:
            continue
        bad = _breaking(allowed, hints[f.name])
        if bad is not None:
            yield f.name, bad


def undeclared(cls: type) -> list[str]:
    """Fields of a config dataclass without a declaration (a test keeps this empty)."""
    return [f.name for f in dataclasses.fields(cls) if f.init and allowed_of(f) is None]
