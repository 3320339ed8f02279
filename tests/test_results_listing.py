"""Listing runs (issue 16): filters, limits, JSON, names and tags everywhere, and listing
commands that never import torch."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.results_kit import invoke, make_run, synthetic_matrices
from udabench.results.specs import current_specs
from udabench.results.store import store_path
from udabench.results.view import open_view


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(11)
    out = tmp_path / "runs"
    for s in range(3):
        make_run(out, "adversarial", s, synthetic_matrices(rng, 12, 0.6), config="3120c03d9a11", name="advent",
                 tags=("ablation", "paper"), finished=f"2026-11-30T10:00:0{s}")
        make_run(out, "source-only", s, synthetic_matrices(rng, 12, 0.5), config="50aa77110000",
                 finished=f"2026-11-30T09:00:0{s}")
    make_run(out, "source-only", 0, synthetic_matrices(rng, 12, 0.5), config="50aa77110000",
             finished="2026-11-30T11:00:00")  # supersedes seed 0
    make_run(out, "clst", 0, synthetic_matrices(rng, 12, 0.5), benchmark="minicity-synthia2cs",
             subsets=("16", "13"), convention="B", spec="syn000000001", config="c1c1c1c1c1c1")
    return out


def _json(*args, root):
    result = invoke("runs", "--format", "json", *args, "--output-dir", root)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_runs_filters_limit_and_json(root):
    every = _json(root=root)
    assert len(every) == 8 and {r["status"] for r in every} == {"finished", "superseded"}
    assert {r["run_id"] for r in _json("--method", "adversarial", root=root)} == \
        {r["run_id"] for r in every if r["method"] == "adversarial"}
    named = _json("--name", "advent", root=root)
    assert len(named) == 3 and all(r["tags"] == ["ablation", "paper"] for r in named)
    assert [r["benchmark"] for r in _json("-b", "minicity-synthia2cs", root=root)] == ["minicity-synthia2cs"]
    superseded = _json("--status", "superseded", root=root)
    assert len(superseded) == 1 and superseded[0]["superseded_by"]
    newest = _json("--limit", "2", root=root)
    assert [r["finished"] for r in newest] == sorted(r["finished"] for r in every)[-2:]
    both = _json("--method", "source-only", "--status", "finished", "--limit", "2", root=root)
    assert [r["seed"] for r in both] == [2, 0]  # oldest first among the two newest
    for r in every:
        assert set(r) >= {"run_id", "run_dir", "status", "method", "config_hash", "seed", "name", "tags",
                          "miou", "val_set", "finished"}
    assert _json("--method", "nope", root=root) == []
    text = invoke("runs", "--method", "nope", "--output-dir", root).stdout
    assert "no runs match these filters" in text


def test_names_and_tags_are_shown(root, monkeypatch):
    from udabench.commands import results

    monkeypatch.setattr(results.console, "width", 160)
    listing = invoke("runs", "--name", "advent", "--output-dir", root).stdout
    assert listing.count("advent [ablation, paper]") == 3
    board = invoke("leaderboard", "-b", "minicity-gta2cs", "--format", "markdown", "--output-dir", root).stdout
    assert "| advent [ablation,paper] |" in board and "| name |" in board
    data = json.loads(invoke("leaderboard", "--format", "json", "--output-dir", root).stdout)
    row = next(r for t in data["tables"] for r in t["rows"] if r["method"] == "adversarial")
    assert (row["name"], row["tags"], row["n"]) == ("advent", "ablation,paper", 3)
    text = " ".join(invoke("compare", "advent", "source-only", "--output-dir", root, "--resamples", 100).stdout.split())
    assert "name advent [ablation, paper]" in text
    invoke("runs", "--reindex", "--output-dir", root)  # names and tags live in result.json: they survive
    again = json.loads(invoke("runs", "--name", "advent", "--format", "json", "--output-dir", root).stdout)
    assert len(again) == 3 and all(r["tags"] == ["ablation", "paper"] for r in again)


def test_listing_commands_do_not_import_torch(root, monkeypatch):
    # The first listing after installing (or editing) udabench fills the benchmark-spec cache;
    # the fingerprint is pinned because other edits to this checkout may happen meanwhile.
    import udabench.results.specs as specs

    monkeypatch.setattr(specs, "code_fingerprint", lambda: "pinned")
    open_view(root)  # builds the store
    current_specs(store_path(root))
    code = (
        "import sys; from click.testing import CliRunner; from udabench.cli import main\n"
        "import udabench.results.specs as specs; specs.code_fingerprint = lambda: 'pinned'\n"
        f"root = {str(root)!r}\n"
        "for args in (['runs'], ['leaderboard'], ['leaderboard', '--format', 'latex', '--per-class'],"
        " ['leaderboard', '-b', 'minicity-gta2cs'], ['compare', 'advent', 'source-only', '--resamples', '100']):\n"
        "    r = CliRunner().invoke(main, args + ['--output-dir', root])\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_spec_cache_follows_the_code(root, monkeypatch):
    import udabench.results.specs as specs

    store = store_path(root)
    open_view(root)
    monkeypatch.setattr(specs, "code_fingerprint", lambda: "this udabench")
    first = current_specs(store)
    assert "minicity-gta2cs" in first and len(first["minicity-gta2cs"]) == 12
    calls = []
    monkeypatch.setattr(specs, "_from_registry", lambda: calls.append(1) or {"x": "y"})
    assert current_specs(store) == first and calls == []  # fresh cache: no registry
    monkeypatch.setattr(specs, "code_fingerprint", lambda: "another udabench")
    assert current_specs(store) == {"x": "y"} and calls == [1]  # changed code: asked again
