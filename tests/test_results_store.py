"""The run store: idempotent upserts, rebuild from run directories, concurrent writers."""
from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3

import numpy as np
import pytest

from tests.results_kit import make_run, synthetic_matrices
from udabench.errors import DataError
from udabench.results import index_run, load_records, reindex, store_path


@pytest.fixture
def mats():
    return synthetic_matrices(np.random.default_rng(0), 6, 0.7)


def test_index_run_is_an_idempotent_upsert(tmp_path, mats):
    store = store_path(tmp_path)
    run = make_run(tmp_path, "source-only", 0, mats)
    index_run(store, run)
    index_run(store, run)
    records = load_records(store)
    assert len(records) == 1
    rec = records[0]
    assert rec["method"] == "source-only" and rec["run_dir"] == str(run.resolve())
    assert rec["provenance"] == {"git": "abc1234", "torch": "2.14.1", "device": "cpu"}
    # A changed result.json replaces the row, keyed by the run directory.
    data = json.loads((run / "result.json").read_text())
    data["miou"]["19"] = 12.5
    (run / "result.json").write_text(json.dumps(data))
    index_run(store, run)
    assert [r["miou"]["19"] for r in load_records(store)] == [12.5]
    con = sqlite3.connect(store)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = con.execute("SELECT benchmark, spec_hash, config_hash, seed, headline_miou, network, checkpoint, "
                      "eval_input, wall_seconds FROM runs").fetchone()
    assert row == ("minicity-gta2cs", "spec00000001", "cfg000000001", 0, 12.5, "student", "last", "32x64", 61.0)


def test_load_records_filters_and_missing_store_is_empty(tmp_path, mats):
    assert load_records(tmp_path / "none" / "store.sqlite") == []
    assert not (tmp_path / "none").exists()
    store = store_path(tmp_path)
    index_run(store, make_run(tmp_path, "a", 0, mats))
    index_run(store, make_run(tmp_path, "b", 0, mats, benchmark="minicity-synthia2cs", subsets=("16", "13")))
    assert [r["method"] for r in load_records(store, "minicity-synthia2cs")] == ["b"]
    assert len(load_records(store)) == 2


def test_reindex_rebuilds_from_run_dirs_and_skips_broken(tmp_path, mats):
    out = tmp_path / "runs"
    runs = [make_run(out, "a", s, mats) for s in range(3)]
    broken = out / "minicity-gta2cs" / "b" / "broken"
    broken.mkdir(parents=True)
    (broken / "result.json").write_text("{not json")
    unfinished = out / "minicity-gta2cs" / "b" / "unfinished"
    unfinished.mkdir()
    store = store_path(out)
    elsewhere = make_run(tmp_path / "other", "c", 0, mats)
    index_run(store, elsewhere)
    summary = reindex(store, out)
    assert summary.indexed == 3
    assert len(summary.skipped) == 1 and str(broken / "result.json") in summary.skipped[0]
    # The stale row of a directory outside the output folder is gone; the runs are all there.
    assert sorted(r["run_dir"] for r in load_records(store)) == sorted(str(r.resolve()) for r in runs)


def test_bad_result_is_a_one_line_error_and_reindex_replaces_a_bad_store(tmp_path, mats):
    run = make_run(tmp_path, "a", 0, mats)
    data = json.loads((run / "result.json").read_text())
    del data["spec_hash"]
    (run / "result.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"result.json: missing key 'spec_hash'"):
        index_run(store_path(tmp_path), run)
    with pytest.raises(DataError, match="does not exist"):
        index_run(store_path(tmp_path), tmp_path / "nowhere")
    bad = tmp_path / "bad" / "store.sqlite"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not sqlite" * 100)
    # reindex replaces an unreadable store: it is only an index.
    out = tmp_path / "bad"
    make_run(out, "a", 1, mats)
    assert reindex(bad, out).indexed == 1
    assert len(load_records(out)) == 1


def _writer(args) -> int:
    store, run_dir, barrier = args
    barrier.wait()  # all processes hit the fresh store at the same moment
    for _ in range(5):  # repeat the upsert to hold the write lock often
        index_run(store, run_dir)
    return 0


def test_eight_concurrent_writers_lose_nothing(tmp_path, mats):
    runs = [make_run(tmp_path / "runs", f"m{i}", i, mats) for i in range(8)]
    store = store_path(tmp_path / "fresh")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_writer, args=((store, run, barrier),)) for run in runs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    records = load_records(store)
    assert sorted(r["method"] for r in records) == [f"m{i}" for i in range(8)]
