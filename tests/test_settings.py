"""Every settable key refuses a value outside its declaration, through the CLI, before any work.

The cases are generated from the config dataclasses (train, paths, model, every registered
method's config, every benchmark's protocol fields), so a new key is covered without a new test.
"""
from __future__ import annotations

import dataclasses
import json
import typing

import pytest
from click.testing import CliRunner

from udabench.benchmarks import Benchmark, protocol_fields
from udabench.cli import main
from udabench.config import PathsConfig, TrainConfig
from udabench.models import SegmenterConfig
from udabench.registry import BENCHMARKS, METHODS
from udabench.settings import Allowed, check_settings, invalid_values, setting, undeclared
from udabench.errors import ConfigError

CONFIGS = {"paths": PathsConfig, "train": TrainConfig, "model": SegmenterConfig,
           **{f"methods.{m}": METHODS.get(m).Config for m in METHODS.names()}}


def _wrong_type(tp) -> object:
    """A TOML value of the wrong type for an annotation (for keys any value of their type fits)."""
    base = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union, type(int | None)) else tp
    if base in (bool,):
        return "maybe"
    if base in (int, float):
        return "many"
    return 5  # strings, paths, tuples, tables: a number is never one


def cases() -> list[tuple[str, object]]:
    out = []
    for prefix, cls in CONFIGS.items():
        hints = typing.get_type_hints(cls)
        bad = dict(invalid_values(cls))
        for f in dataclasses.fields(cls):
            if f.init and not f.name.isupper():
                out.append((f"{prefix}.{f.name}", bad.get(f.name, _wrong_type(hints[f.name]))))
    hints = typing.get_type_hints(Benchmark)
    bad = dict(invalid_values(Benchmark))
    for name in BENCHMARKS.names():
        for f in protocol_fields():
            if f.name != "name":
                out.append((f"benchmarks.{name}.{f.name}", bad.get(f.name, _wrong_type(hints[f.name]))))
    return out


def toml(value: object) -> str:
    return json.dumps(value)  # JSON scalars and arrays are TOML values too


def test_every_config_field_declares_its_valid_values():
    for prefix, cls in CONFIGS.items():
        assert undeclared(cls) == [], f"{prefix}: declare these with setting(...)"
    assert [f.name for f in protocol_fields() if "allowed" not in f.metadata] == ["name"]


@pytest.mark.parametrize("key,value", cases(), ids=lambda v: str(v) if isinstance(v, str) else None)
def test_an_invalid_value_for_any_key_is_one_line_before_work(key, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UDABENCH_DATA", raising=False)
    item = f"{key}={toml(value)}"
    result = CliRunner().invoke(main, ["run", "source-only", "--benchmark", "minicity-gta2cs",
                                       "--set", f"paths.data_root={toml(str(tmp_path / 'data'))}",
                                       "--set", item])
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (item, result.output)
    assert len(err) == 1 and err[0].startswith("error: "), (item, result.stderr)
    assert key.split(".")[-1] in err[0] and f"--set {item}" in err[0], (item, err[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data generated, no run folder


def test_declarations_describe_and_refuse():
    @dataclasses.dataclass
    class Cfg:
        a: int = setting(1, ge=1)
        b: tuple[float, ...] = setting((1.0,), min_len=1, item=Allowed(gt=0, le=4))
        c: str = setting("x", choices=("x", "y"))

    check_settings(Cfg(), "k")
    bad = dict(invalid_values(Cfg))
    assert bad == {"a": 0, "b": [], "c": "not-a-choice"}
    with pytest.raises(ConfigError, match=r"^k.a = 0 is not allowed: expected a finite number >= 1$"):
        check_settings(Cfg(a=0), "k")
    with pytest.raises(ConfigError, match=r"k.b = \[1.0, 5.0\] is not allowed: expected a list of "
                                          r"at least 1 values, each a finite number > 0 and <= 4"):
        check_settings(Cfg(b=(1.0, 5.0)), "k")
    with pytest.raises(ConfigError, match=r"k.c = 'z' is not allowed: expected one of 'x', 'y'"):
        check_settings(Cfg(c="z"), "k")
    with pytest.raises(ConfigError, match=r"k.a: expected an integer, got 'one'"):
        check_settings(Cfg(a="one"), "k")


def test_the_case_list_covers_hundreds_of_keys():
    keys = [k for k, _ in cases()]
    assert len(keys) == len(set(keys)) and len(keys) > 150
    assert {"train.eval_scales", "train.iters", "model.aspp_branches", "methods.clst.tau",
            "benchmarks.gta2cs.flip_p", "benchmarks.minicity-gta2cs.minicity"} <= set(keys)
    assert dict(cases())["train.eval_scales"] == [] and dict(cases())["train.iters"] == -1
