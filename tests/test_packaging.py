"""The installed distribution must carry every package, including the reference methods."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.venvkit import clean_env, make_venv

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"udabench"} | {
        "udabench." + ".".join(p.parent.relative_to(REPO / "udabench").parts)
        for p in (REPO / "udabench").rglob("__init__.py") if p.parent != REPO / "udabench"
    }
    found.add("udabench.methods")
    assert found == listed


@pytest.mark.slow
def test_wheel_outside_repo_lists_and_imports_methods(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("udabench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "udabench/methods/source_only.py" in names
    # MiniCity's default initialisation ships inside the package (its runs load it by default)
    for backbone in ("resnet-tiny", "mit-tiny"):
        assert f"udabench/minicity/weights/{backbone}.safetensors" in names
        assert f"udabench/minicity/weights/{backbone}.json" in names
    assert "udabench/results/reported.json" in names or not (REPO / "udabench/results").exists()
    # A venv that sees the running interpreter's packages (torch...) whether the tests run from a
    # system Python or from a venv (tests/venvkit.py); the wheel installed into it must win over
    # the udabench the running interpreter has (often an editable install of this checkout).
    venv = tmp_path / "venv"
    py = make_venv(venv)
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                    str(wheel)], check=True, capture_output=True, env=clean_env())
    code = ("import udabench, sys; from udabench.registry import METHODS; "
            "print(udabench.__file__); print(' '.join(METHODS.names()))")
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env=clean_env())
    assert str(venv) in out.stdout.splitlines()[0]
    assert "source-only" in out.stdout and "oracle" in out.stdout
