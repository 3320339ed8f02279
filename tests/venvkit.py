"""A throw-away virtual environment that sees the packages of the interpreter running the tests.

``python -m venv --system-site-packages`` run by a venv's interpreter makes a venv whose "system"
packages are the BASE interpreter's, not the running venv's (issue 13, item 11): torch, pytest or
an editable udabench installed in the running venv would be missing. ``make_venv`` therefore also
writes a ``.pth`` file that runs ``site.addsitedir`` on each site-packages folder of the running
interpreter, so the same packages are importable however the tests were started (system Python,
pyenv, a venv). The new venv's own site-packages stay first on ``sys.path``: what is installed
into it wins over what it inherits.
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "_udabench_tests_parent_env.pth"


def running_site_dirs() -> list[str]:
    """The site-packages folders of the running interpreter (venv or not), user site included
    when it is active."""
    paths = sysconfig.get_paths()
    dirs = [paths["purelib"], paths["platlib"]]
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user and user in sys.path:
        dirs.append(user)
    out: list[str] = []
    for d in dirs:
        if d not in out and Path(d).is_dir():
            out.append(d)
    return out


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def make_venv(venv: Path) -> Path:
    """A new venv at ``venv`` that inherits the running interpreter's packages; returns its
    python. No pip of its own: ``python -m pip`` there runs the inherited pip, which installs
    into the new venv."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True, capture_output=True)
    py = venv_python(venv)
    probe = subprocess.run([str(py), "-c", "import json, sys, sysconfig; print(json.dumps("
                            "[sysconfig.get_paths()['purelib'], sys.path]))"],
                           check=True, capture_output=True, text=True)
    purelib, seen = json.loads(probe.stdout)
    missing = [d for d in running_site_dirs() if d not in seen]
    lines = [f"import site; site.addsitedir({d!r})" for d in missing]
    (Path(purelib) / PTH_NAME).write_text("\n".join(lines) + "\n")
    return py


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses in such a venv: one torch thread, no PYTHONPATH (it would
    shadow what the venv has installed), no data-root override."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "UDABENCH_DATA")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200", **extra)
    return env
