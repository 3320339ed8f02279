"""The notebook API (issue 17): the same numbers as the CLI, and docs/examples/results_api.py runs."""
from __future__ import annotations

import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.results_kit import make_run, synthetic_matrices
from udabench.cli import main
from udabench.results import api
from udabench.results.view import open_view

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "results_api.py"


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(21)
    difficulty = rng.uniform(0.6, 1.2, 30)
    out = tmp_path / "runs"
    for s in range(3):
        for method, acc, cfg in (("clst", 0.72, "c1c1c1c1c1c1"), ("source-only", 0.55, "50aa77110000"),
                                 ("adversarial", 0.6, "3120c03d9a11")):
            make_run(out, method, s, synthetic_matrices(rng, 30, acc, difficulty=difficulty), config=cfg)
    open_view(out)  # the store exists, as after `udabench run`: no first-use notice
    return out


def test_api_gives_the_cli_numbers(root):
    runs = api.load_runs(root)
    assert len(runs) == 9 and set(runs["status"]) == {"finished"} and "IoU road" in runs
    table = api.leaderboard(root)
    cli = json.loads(CliRunner().invoke(main, ["leaderboard", "--format", "json", "--output-dir", str(root)]).stdout)
    by_method = {r["method"]: r for r in cli["tables"][0]["rows"]}
    for _, row in table.iterrows():
        assert row["mIoU19"] == pytest.approx(by_method[row["method"]]["mIoU19"], abs=1e-4)
        assert row["n"] == by_method[row["method"]]["n"] == 3
    result = api.compare(root, "clst", "source-only", resamples=300)
    text = " ".join(CliRunner().invoke(main, ["compare", "clst", "source-only", "--resamples", "300",
                                              "--output-dir", str(root)]).stdout.split())
    assert result.verdict() in text and result.bootstrap["19"].low > 0
    fig = api.plot(root, ["clst", "source-only", "adversarial"], size="page")
    assert len(fig.axes) == 1


def test_gone_runs_warn_in_the_api(root):
    shutil.rmtree(next((root / "minicity-gta2cs" / "clst").iterdir()))
    with pytest.warns(api.StoreNotice, match="left out 1 indexed run"):
        table = api.leaderboard(root)
    assert int(table.loc[table["method"] == "clst", "n"].iloc[0]) == 2
    with pytest.warns(api.StoreNotice):
        assert len(api.load_runs(root, status=("missing",))) == 1


def test_documented_example_runs(root, tmp_path, capsys, monkeypatch):
    figure = tmp_path / "methods.pdf"
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(root), str(figure)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "9 finished runs of 3 methods" in out
    assert r"\toprule" in out and "beats" in out and re.search(r"95% CI over images: \[[\d.-]+, [\d.-]+\]", out)
    assert "1 panel(s) written to" in out and figure.read_bytes().startswith(b"%PDF-")
