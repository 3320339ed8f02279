"""The run store: idempotent upserts, rebuild from run directories, concurrent writers."""
from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from udabench.errors import DataError, UserError
from udabench.taxonomy import CLASS_NAMES
from udabench.results import index_run, load_records, reindex, store_path


_STAMPS = itertools.count(90000)


def synthetic_matrices(rng: np.random.Generator, n: int, accuracy, pixels: int = 400,
                       difficulty: np.ndarray | None = None) -> np.ndarray:
    """[n, 19, 19] per-image confusion matrices: each ground-truth pixel of class c is predicted
    correctly with probability accuracy[c] (times the image's difficulty), else as a uniformly
    random other class."""
    acc = np.broadcast_to(np.asarray(accuracy, dtype=np.float64), (19,))
    diff = np.ones(n) if difficulty is None else difficulty
    gt = rng.multinomial(pixels, np.full(19, 1 / 19), size=n)  # [n, 19] pixels per class
    p = np.clip(acc[None, :] * diff[:, None], 0, 1)
    correct = rng.binomial(gt, p)
    mats = np.zeros((n, 19, 19), np.int64)
    idx = np.arange(19)
    mats[:, idx, idx] = correct
    wrong = gt - correct
    for c in range(19):
        others = np.delete(idx, c)
        spread = rng.multinomial(wrong[:, c], np.full(18, 1 / 18))
        mats[:, c, others] = spread
    return mats


def make_run(out: Path, method: str, seed: int, matrices: np.ndarray, *, benchmark: str = "minicity-gta2cs",
             spec: str = "spec00000001", config: str = "cfg000000001", finished: str | None = None,
             uda: bool = True, subsets: tuple[str, ...] = ("19",), convention: str = "A",
             ids: list[str] | None = None, iters: int = 10, name: str | None = None,
             tags: tuple[str, ...] = (), settings: dict | None = None, modern: bool = False, **extra) -> Path:
    """A finished run directory like `udabench run` leaves: result.json (scored from the matrices),
    config.json, per_image.npz and env.json. ``modern``: with the keys newer records carry
    (planned_iters, eval.val_fingerprint, iou_convention); ``extra`` keys go into result.json as they are."""
    from udabench.metrics import apply_convention, iou_from_matrix, score_matrix

    score = score_matrix(matrices.sum(0), subsets, convention)
    run_id = f"20261130-{next(_STAMPS):06d}-s{seed}-{config[:6]}"  # unique, like a real run id
    run_dir = out / benchmark / method / run_id
    run_dir.mkdir(parents=True)
    record = {
        "schema": 1, "run_id": run_id, "run_dir": str(run_dir), "method": method, "uda": uda,
        "benchmark": benchmark, "spec_hash": spec, "config_hash": config, "seed": seed, "iters": iters,
        "subsets": list(subsets), "headline": subsets[0], "convention": convention,
        "miou": {k: v * 100 for k, v in score.miou.items()}, "iou": {k: v * 100 for k, v in score.iou.items()},
        "pixel_accuracy": score.pixel_accuracy * 100,
        "eval": {"input_size": [32, 64], "align_corners": False, "flip": False, "scales": [1.0],
                 "network": "student", "checkpoint": "last", "images": len(matrices)},
        "model": {}, "train": {"batch_size": 2},
        "compute": {"train_seconds": 60.0 + seed, "eval_seconds": 1.0, "wall_seconds": 61.0 + seed, "gpu_hours": 0.0,
                    "peak_memory_bytes": 0, "images_per_second": 5.0, "device": "cpu"},
        "method_config": {}, "finished": finished or f"2026-11-30T09:00:{seed:02d}",
        **({"name": name} if name else {}), **({"tags": list(tags)} if tags else {}),
    }
    names = ids or [f"img{i:04d}" for i in range(len(matrices))]
    if modern:
        conv = iou_from_matrix(apply_convention(matrices.sum(0), convention)) * 100
        record.update(planned_iters=iters, iou_convention=dict(zip(CLASS_NAMES, map(float, conv))))
        record["eval"]["val_fingerprint"] = f"val{len(names)}-{abs(hash(tuple(names))) % 10**8:08d}"
    record.update(extra)
    plan = {"method": method, "benchmark": benchmark, "seed": seed, "spec_hash": spec,
            "train": {"iters": iters, "batch_size": 2}, "model": {}, "method_config": {}}
    for section, values in (settings or {}).items():
        plan[section] = {**plan.get(section, {}), **values}
    (run_dir / "config.json").write_text(json.dumps(plan))
    (run_dir / "result.json").write_text(json.dumps(record))
    np.savez_compressed(run_dir / "per_image.npz", ids=np.array(names, dtype=str), matrices=matrices)
    (run_dir / "env.json").write_text(json.dumps({"git": "abc1234", "torch": "2.14.1", "device": "cpu", "secret": 1}))
    return run_dir


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
