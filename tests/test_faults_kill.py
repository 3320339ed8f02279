"""SIGKILL real ``udabench run`` processes at chosen moments, resume, and demand the exact result.

Each chain kills one run several times (every resume is killed again at a new moment) and finally
lets it finish; the result must equal an uninterrupted run of the same settings bit for bit:
result.json IoUs, per-image matrices, the final checkpoint's method tensors and every logged loss.
Moments are found by polling the run directory; the process is frozen (SIGSTOP) when the moment
seems to come, the frozen state is checked (e.g. the checkpoint's temporary file is still there),
and only then killed, so every kill point below is proven to have been hit.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.faultkit import (checkpoint_step, generate_data, metric_steps, run_dir_in, spawn,
                            stop_when, tmp_files, write_toml, assert_same_result)

pytestmark = pytest.mark.slow

ITERS = 10
CLST = ("clst", "--set", "methods.clst.warmup_iters=2")
# rounds start at iteration 2 (round 0) and 6 (round 1); labelling in the main process; a warm-up
# in the run instead of CBST's default warm start (which would first make a source-only run here)
ST = ("self-training", "--set", "train.init_from=none", "--set", "methods.self-training.warmup_iters=2",
      "--set", "methods.self-training.rounds=2", "--set", "methods.self-training.round_iters=4",
      "--set", "methods.self-training.label_workers=0")
CHAINS = {"source-only": ("source-only",), "clst": CLST, "self-training": ST}
SURVIVED: list[str] = []  # kill points whose resumed run matched the reference


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Per method: an uninterrupted reference run, and the killed chain in a thread; all three
    methods at once (the SIGSTOP check keeps the kill moments exact however busy the machine)."""
    data = tmp_path_factory.getbasetemp() / "faults-data"
    generate_data(data)
    out = {}
    for name, args in CHAINS.items():
        work = tmp_path_factory.mktemp(f"kill-{name}")
        # 192x96 training crops make a step take a few hundred ms: room to land inside it
        write_toml(work, data, iters=ITERS, checkpoint_every=3 if name == "source-only" else 4,
                   train_size=(192, 96), eval_size=(192, 96))
        proc = spawn(work, "run", *args, "-b", "minicity-gta2cs", "--out", "straight", log="straight")
        box: dict = {}

        def chain(work=work, args=args, name=name, box=box):
            try:
                box["run"] = _chain(work, args, KILLS[name])
            except BaseException as exc:  # re-raised in the test
                box["error"] = exc

        thread = threading.Thread(target=chain, daemon=True)
        thread.start()
        out[name] = (work, proc, thread, box)
    yield out
    for _, p, thread, _ in out.values():
        thread.join(timeout=600)
        if p.poll() is None:
            p.kill()
            p.wait()


def _finish_reference(work: Path, proc) -> Path:
    assert proc.wait(timeout=600) == 0, (work / "straight.out").read_text()[-2000:]
    return run_dir_in(work / "straight")


def _chain(work: Path, args: tuple[str, ...], kills: list[tuple[str, object, object]]) -> Path:
    """Start a run, kill it at each moment in turn (resuming in between), then let it finish."""
    base = work / "chain"
    proc = spawn(work, "run", *args, "-b", "minicity-gta2cs", "--out", "chain", log="chain0")
    found: list[Path] = []

    def guard(fn):
        def check() -> bool:
            if not found:  # look for the run directory until it exists, then remember it
                run = run_dir_in(base)
                if run is None:
                    return False
                found.append(run)
            return fn(found[0])
        return check

    for n, (moment, ready, confirm) in enumerate(kills, 1):

        hit = stop_when(proc, guard(ready), guard(confirm), timeout=400, poll=0.002)
        assert hit, f"{moment}: the run ended first\n" + (work / f"chain{n - 1}.out").read_text()[-2000:]
        run = run_dir_in(base)
        assert not (run / "result.json").exists()
        proc = spawn(work, "run", "--resume", str(run), log=f"chain{n}")
    assert proc.wait(timeout=600) == 0, (work / f"chain{len(kills)}.out").read_text()[-2000:]
    return run_dir_in(base)


def _check(started, name: str) -> Path:
    work, proc, thread, box = started[name]
    thread.join(timeout=900)
    if "error" in box:
        raise box["error"]
    chained = box["run"]
    assert_same_result(_finish_reference(work, proc), chained)
    # the log has each step exactly once (no duplicate lines from a killed attempt)
    assert metric_steps(chained) == list(range(1, ITERS + 1))
    SURVIVED.extend(moment for moment, _, _ in KILLS[name])
    return chained


def _no_ckpt_tmp(run: Path) -> bool:
    return not tmp_files(run / "checkpoints", ".last.pt.*.tmp")


def _journal_written(run: Path, generation: int) -> bool:
    j = run / "state" / f"clst_ensemble.bin.journal.{generation}"
    return j.exists() and j.stat().st_size > 0


def _labelling(run: Path, k: int) -> bool:
    return (run / "state" / f"self_training_round{k}.npy.tmp").exists()


# (moment, ready: worth freezing the process to look, confirm: checked on the frozen state)
KILLS = {
    "source-only": [
        # before the first checkpoint: resume must start again from scratch, cleanly
        ("source-only: in a step before the first checkpoint",
         lambda r: len(metric_steps(r)) >= 1,
         lambda r: checkpoint_step(r) is None and _no_ckpt_tmp(r)),
        # the log is ahead of the checkpoint: resume must cut it back
        ("source-only: in a step after a checkpoint",
         lambda r: len(metric_steps(r)) >= 5,
         lambda r: checkpoint_step(r) == 3 and _no_ckpt_tmp(r) and max(metric_steps(r)) >= 4),
        ("source-only: during a checkpoint write",
         lambda r: not _no_ckpt_tmp(r),
         lambda r: not _no_ckpt_tmp(r)),
        ("source-only: during the final evaluation",
         lambda r: ITERS in metric_steps(r) and _no_ckpt_tmp(r),
         lambda r: _no_ckpt_tmp(r) and checkpoint_step(r) == ITERS and not (r / "result.json").exists()),
    ],
    "clst": [
        # the ensemble file is dirty but no checkpoint exists: it must be zeroed, not trusted
        ("clst: at an ensemble update before the first checkpoint",
         lambda r: _journal_written(r, 0),
         lambda r: checkpoint_step(r) is None and _journal_written(r, 0)),
        # the file is ahead of the checkpoint: the undo journal must put it back
        ("clst: at an ensemble update after a checkpoint",
         lambda r: _journal_written(r, 1),
         lambda r: checkpoint_step(r) == 4 and _no_ckpt_tmp(r)),
        # state() already opened a new journal generation; the old checkpoint must still resume
        ("clst: during a checkpoint write",
         lambda r: not _no_ckpt_tmp(r),
         lambda r: not _no_ckpt_tmp(r)),
    ],
    "self-training": [
        ("self-training: labelling round 0, before the first checkpoint",
         lambda r: _labelling(r, 0),
         lambda r: _labelling(r, 0) and checkpoint_step(r) is None),
        ("self-training: labelling round 1, after a checkpoint",
         lambda r: _labelling(r, 1),
         lambda r: _labelling(r, 1) and checkpoint_step(r) == 4),
    ],
}


def test_source_only_survives_kills_in_steps_checkpoint_writes_and_evaluation(started):
    chained = _check(started, "source-only")
    # the killed checkpoint write left no checkpoint-sized temporary behind
    assert sorted(p.name for p in (chained / "checkpoints").iterdir()) == ["last.pt"]


def test_clst_survives_kills_during_ensemble_updates_and_checkpoint_writes(started):
    _check(started, "clst")


def test_self_training_survives_kills_during_pseudo_label_rounds(started):
    chained = _check(started, "self-training")
    # the killed labelling passes were redone: both rounds' files are whole, no temporary is left
    assert sorted(p.name for p in (chained / "state").iterdir()) == [
        "self_training_round0.npy", "self_training_round1.npy"]


def test_report_kill_points():
    """Prints the kill points that were hit and survived (for the README figures)."""
    print(f"\nkill points survived: {len(SURVIVED)}")
    for k in SURVIVED:
        print(f"  - {k}")
