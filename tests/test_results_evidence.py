"""The store and the disk agree (issue 20): deleted, changed or moved run directories leave the
tables instead of haunting them; `runs --prune` and `--reindex` clean up."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest

from tests.results_kit import invoke, make_run, synthetic_matrices
from udabench.results import load_records
from udabench.results.store import SCHEMA_VERSION, index_run, store_path
from udabench.results.view import StoreNotice, open_view


@pytest.fixture
def three_seeds(tmp_path):
    """source-only and clst, 3 seeds each, indexed the way `udabench run` indexes them."""
    rng = np.random.default_rng(1)
    root = tmp_path / "runs"
    runs = {"source-only": [], "clst": []}
    for s in range(3):
        for method, acc, cfg in (("source-only", 0.55, "so0000000001"), ("clst", 0.7, "cl0000000001")):
            run = make_run(root, method, s, synthetic_matrices(rng, 30, acc + 0.03 * s), config=cfg)
            index_run(store_path(root), run)
            runs[method].append(run)
    return root, runs


def _board_row(root, method):
    data = json.loads(invoke("leaderboard", "--format", "json", "--output-dir", root).stdout)
    (table,) = data["tables"]
    return next(r for r in table["rows"] if r["method"] == method)


def _miou(run):
    return json.loads((run / "result.json").read_text())["miou"]["19"]


def test_deleted_seed_leaves_the_leaderboard_with_one_notice(three_seeds):
    root, runs = three_seeds
    before = _board_row(root, "clst")
    assert before["n"] == 3
    shutil.rmtree(runs["clst"][1])
    result = invoke("leaderboard", "--format", "json", "--output-dir", root)
    row = next(r for r in json.loads(result.stdout)["tables"][0]["rows"] if r["method"] == "clst")
    kept = [_miou(runs["clst"][0]), _miou(runs["clst"][2])]
    assert row["n"] == 2 and row["seeds"] == "0,2"
    assert row["mIoU19"] == pytest.approx(np.mean(kept), abs=1e-4)
    assert row["mIoU19 std"] == pytest.approx(np.std(kept, ddof=1), abs=1e-4)
    notices = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(notices) == 1
    assert "left out 1 indexed run(s) whose directory or result.json is gone" in notices[0]
    assert "udabench runs --prune" in notices[0] and "--reindex" in notices[0]
    # The same for every reader: runs, the Python API.
    runs_out = invoke("runs", "--output-dir", root)
    assert runs["clst"][1].name not in runs_out.stdout and "left out 1" in runs_out.stderr
    with pytest.warns(StoreNotice, match="left out 1 indexed run"):
        assert len(load_records(root)) == 5


def test_compare_uses_the_remaining_runs_and_names_gone_ones(three_seeds):
    root, runs = three_seeds
    gone = runs["clst"][2]
    shutil.rmtree(gone)
    result = invoke("compare", "clst", "source-only", "--output-dir", root, "--resamples", 200)
    assert result.exit_code == 0, result.output
    assert "seed(s) 0,1," in " ".join(result.stdout.split())  # clst: seeds 0 and 1 only
    assert "over seeds: clst" in " ".join(result.stdout.split()) and "(n=2)" in result.stdout
    explicit = invoke("compare", gone.name, runs["source-only"][0].name, "--output-dir", root)
    assert explicit.exit_code == 2
    assert f"run {gone.name} is gone" in explicit.stderr and "--prune" in explicit.stderr


def test_prune_removes_exactly_the_missing_row(three_seeds):
    root, runs = three_seeds
    victim = runs["source-only"][0]
    shutil.rmtree(victim)
    result = invoke("runs", "--prune", "--output-dir", root)
    assert result.exit_code == 0 and f"pruned 1 row(s) of runs that are gone: {victim.resolve()}" in result.stderr
    con = sqlite3.connect(store_path(root))
    left = sorted(r[0] for r in con.execute("SELECT run_dir FROM runs"))
    everything = sorted(str(r.resolve()) for group in runs.values() for r in group)
    assert left == [d for d in everything if d != str(victim.resolve())]
    assert "left out" not in invoke("runs", "--output-dir", root).stderr


def test_changed_result_is_left_out_until_reindexed(three_seeds):
    root, runs = three_seeds
    path = runs["clst"][0] / "result.json"
    data = json.loads(path.read_text())
    data["miou"]["19"] = 99.0
    path.write_text(json.dumps(data, indent=1))
    view = open_view(root)
    assert [r["status"] for r in view.rows if r["run_dir"] == str(runs["clst"][0].resolve())] == ["changed"]
    assert "1 whose result.json changed since it was indexed" in view.notices[0]
    assert _board_row(root, "clst")["n"] == 2
    # Same size, new mtime: still noticed.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    index_run(store_path(root), runs["clst"][0])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    assert open_view(root).gone
    invoke("runs", "--reindex", "--output-dir", root)
    row = _board_row(root, "clst")
    assert row["n"] == 3 and 99.0 in [_miou(r) for r in runs["clst"]]


def test_moved_output_folder_is_found_again_once(three_seeds, tmp_path):
    root, runs = three_seeds
    moved = tmp_path / "elsewhere" / "runs-moved"
    moved.parent.mkdir()
    shutil.move(root, moved)
    view = open_view(moved)
    assert len(view.gone) == 6 and not view.records  # the store moved along with stale paths
    result = invoke("runs", "--reindex", "--output-dir", moved)
    assert "indexed 6 run(s)" in result.stderr and "left out" not in result.stderr
    records = open_view(moved).records
    assert len(records) == 6 and all(r["run_dir"].startswith(str(moved.resolve())) for r in records)
    assert _board_row(moved, "clst")["n"] == 3
    # A copy of a run next to the original (same config and seed) still counts once.
    shutil.copytree(moved / "minicity-gta2cs" / "clst", moved / "backup" / "clst")
    invoke("runs", "--reindex", "--output-dir", moved)
    view = open_view(moved)
    assert len(view.records) == 6 and len(view.having("superseded")) == 3
    assert _board_row(moved, "clst")["n"] == 3


def test_old_schema_store_is_rebuilt_with_a_notice(three_seeds):
    root, _ = three_seeds
    con = sqlite3.connect(store_path(root))
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    con.commit()
    con.close()
    result = invoke("leaderboard", "--format", "csv", "--output-dir", root)
    assert result.exit_code == 0
    assert "schema version 1" in result.stderr and "indexed 6 run(s)" in result.stderr
    assert len(result.stdout.splitlines()) == 3  # header + 2 configurations


@pytest.mark.parametrize("content", [b"", b"garbage, not a database" * 10])
def test_empty_or_foreign_store_never_reads_as_no_runs(three_seeds, content):
    root, _ = three_seeds
    for suffix in ("", "-wal", "-shm"):
        (root / f"store.sqlite{suffix}").unlink(missing_ok=True)
    store_path(root).write_bytes(content)
    result = invoke("runs", "--output-dir", root)
    assert result.exit_code == 0 and "no finished runs" not in result.output
    assert "indexed 6 run(s)" in result.stderr
    why = "listed no runs but run directories exist" if not content else "is not an SQLite file"
    assert why in result.stderr
    assert result.stdout.count("-s0-") == 2


def test_store_that_cannot_be_rebuilt_says_exactly_what_is_wrong(three_seeds, monkeypatch):
    root, _ = three_seeds
    store_path(root).write_bytes(b"garbage, not a database" * 10)
    import udabench.results.view as view_module

    def read_only(*args, **kwargs):
        raise view_module.UserError(f"cannot open the run store {store_path(root)} (attempt to write a readonly database)")

    monkeypatch.setattr(view_module, "reindex", read_only)
    result = invoke("runs", "--output-dir", root)
    assert result.exit_code == 2
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: the run store") and "is not an SQLite file" in line
    assert "rebuilding it from the run directories failed" in line and "readonly database" in line


def test_a_store_of_unfinished_runs_is_rebuilt_once(tmp_path):
    out = tmp_path / "runs"
    make_run(out, "a", 0, synthetic_matrices(np.random.default_rng(0), 6, 0.5), iters=0)  # a non-run
    first = invoke("runs", "--output-dir", out)
    assert "indexed 0 run(s)" in first.stderr and "trained 0 iterations" in first.stderr
    again = invoke("runs", "--output-dir", out)
    assert "indexed" not in again.stderr and "no finished runs" in again.stdout
