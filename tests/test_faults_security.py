"""Security: checkpoints never unpickle code, no shell strings, run directories cannot escape."""
from __future__ import annotations

import ast
import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.faultkit import REPO, generate_data, invoke, one_thread, write_toml
from udabench.engine.checkpoint import MAGIC, load_checkpoint
from udabench.errors import UserError

SOURCES = sorted([*(REPO / "udabench").rglob("*.py"), *(REPO / "methods").rglob("*.py")])


class _Exploit:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _evil_payload(marker: Path) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"step": 1, "method": {"w": torch.zeros(1)}, "x": _Exploit(marker)}, buffer)
    return buffer.getvalue()


def _with_header(payload: bytes) -> bytes:
    import hashlib

    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def test_the_crafted_checkpoint_is_a_real_exploit(tmp_path):
    """Control: loaded the unsafe way, the payload does write its marker."""
    marker = tmp_path / "marker"
    import io

    torch.load(io.BytesIO(_evil_payload(marker)), weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("header", [False, True], ids=["plain torch file", "valid udabench checksum"])
def test_a_pickle_checkpoint_is_refused_and_runs_nothing(header, tmp_path):
    marker = tmp_path / "marker"
    payload = _evil_payload(marker)
    path = tmp_path / "last.pt"
    path.write_bytes(_with_header(payload) if header else payload)
    with pytest.raises(UserError, match="cannot be loaded safely") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_eval_resume_and_init_checkpoints_refuse_a_pickle_checkpoint(tmp_path, tmp_path_factory,
                                                                     monkeypatch):
    """Through the CLI: eval, --resume, and starting from another run's weights (train.init_from)."""
    data = tmp_path_factory.getbasetemp() / "faults-data"
    generate_data(data)
    write_toml(tmp_path, data, iters=2, checkpoint_every=2)
    monkeypatch.chdir(tmp_path)
    with one_thread():
        assert invoke("run", "source-only", "-b", "minicity-gta2cs").exit_code == 0
    [run] = [p.parent for p in tmp_path.glob("runs/**/config.json")]
    marker = tmp_path / "marker"
    evil = _with_header(_evil_payload(marker))
    (run / "checkpoints" / "last.pt").write_bytes(evil)
    (run / "result.json").unlink()  # so that --resume is allowed to try
    evil_file = tmp_path / "evil.pt"
    evil_file.write_bytes(evil)
    for args in (["eval", str(run)], ["run", "--resume", str(run)],
                 ["run", "self-training", "-b", "minicity-gta2cs",
                  "--set", f"train.init_from=\"{evil_file}\""],
                 ["run", "clst", "-b", "minicity-gta2cs", "--set", f"train.init_from=\"{evil_file}\""]):
        with one_thread():
            r = invoke(*args)
        assert r.exit_code == 2 and "cannot be loaded safely" in r.stderr, (args, r.output)
        assert not marker.exists(), args


# -- source scans --------------------------------------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_scan_covers_the_code():
    assert len(SOURCES) > 40 and any(p.name == "checkpoint.py" for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_shell_strings_and_only_safe_loading(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for call, name in _calls(tree):
        where = f"{path.relative_to(REPO)}:{call.lineno}"
        kw = {k.arg: k.value for k in call.keywords}
        assert name not in ("os.system", "os.popen", "system", "popen", "eval", "exec",
                            "pickle.load", "pickle.loads", "marshal.loads"), where
        assert not name.startswith(("os.spawn", "os.exec")), where
        if "shell" in kw:
            assert isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False, where
        if name.startswith("subprocess."):  # an argument list, never a string
            assert call.args and not isinstance(call.args[0], (ast.Constant, ast.JoinedStr)), where
        if name in ("torch.load", "load") and ("weights_only" in kw or name == "torch.load"):
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, where
        if "allow_pickle" in kw:
            assert isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False, where


# -- run directories stay where they belong ----------------------------------------------------
RUN_ID = re.compile(r"^\d{8}-\d{6}-s\d+-[0-9a-f]{6}$")


def test_registered_names_are_safe_path_components():
    from udabench.registry import BENCHMARKS, METHODS

    for name in [*METHODS.names(), *BENCHMARKS.names()]:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", name), name


@pytest.mark.parametrize("field,value", [("method", "../../escape"), ("benchmark", "../escape"),
                                         ("method", "/abs/escape"), ("benchmark", "minicity-gta2cs/..")])
def test_crafted_names_never_reach_the_file_system(field, value, tmp_path):
    from udabench.config import TrainConfig
    from udabench.engine.runner import resolve_plan

    names = {"method": "source-only", "benchmark": "minicity-gta2cs", field: value}
    with pytest.raises(UserError, match="unknown"):
        resolve_plan(names["method"], names["benchmark"], 0, TrainConfig(), {}, {}, {},
                     tmp_path / "data", tmp_path / "runs")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", [0, 7, 2**31, -1])
def test_a_run_id_is_one_plain_path_component(seed, tmp_path):
    """The id is built from a timestamp, the integer seed and a hex hash only: whatever the
    seed, the run directory is a direct child of <output>/<benchmark>/<method>."""
    from udabench.config import TrainConfig
    from udabench.engine.runner import new_run, resolve_plan
    from udabench.engine.rundir import new_run_id

    plan = resolve_plan("source-only", "minicity-gta2cs", abs(seed), TrainConfig(), {}, {}, {},
                        tmp_path / "data", tmp_path / "runs")
    plan = dataclasses.replace(plan, seed=seed)
    rid = new_run_id(seed, plan.config_hash())
    assert "/" not in rid and ".." not in rid and (RUN_ID.match(rid) or seed < 0)
    run = new_run(plan)
    assert run.path.parent == tmp_path / "runs" / "minicity-gta2cs" / "source-only"
    assert run.path.resolve().is_relative_to((tmp_path / "runs").resolve())
    shutil.rmtree(tmp_path / "runs")


def test_a_crafted_seed_in_config_json_is_refused(tmp_path):
    import json

    from udabench.engine.runner import open_run

    (tmp_path / "config.json").write_text(json.dumps(
        {"method": "source-only", "benchmark": "minicity-gta2cs", "seed": "0/../../x", "train": {},
         "model": {}, "method_config": {}, "data_root": "d", "output_dir": "o"}))
    with pytest.raises(UserError, match="not a udabench run configuration"):
        open_run(tmp_path)
