"""Disk and file faults: full disk during a checkpoint write, damaged checkpoints, unwritable output
folders, many runs finishing into one store at once, and two processes on one run directory."""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.faultkit import (generate_data, invoke, metric_steps, one_thread, snapshot, spawn,
                            write_toml)
from udabench.engine.checkpoint import load_checkpoint
from udabench.engine.trainer import Trainer

RUN = ("run", "source-only", "-b", "minicity-gta2cs")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "faults-data"
    generate_data(root)
    return root


@pytest.fixture()
def work(tmp_path, data, monkeypatch):
    write_toml(tmp_path, data, iters=6, checkpoint_every=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UDABENCH_DATA", raising=False)
    return tmp_path


def one_error_line(result) -> str:
    """The CLI's single error line (stderr), after checking there is nothing else."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def the_run(base: Path) -> Path:
    [run] = [p.parent for p in base.glob("**/config.json")]
    return run


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, data):
    """A run stopped (like Ctrl-C) at iteration 2: config.json and checkpoints/last.pt at step 2."""
    base = tmp_path_factory.mktemp("interrupted")
    write_toml(base, data, iters=6, checkpoint_every=2)
    mp_ = pytest.MonkeyPatch()
    original = Trainer.train_step

    def stop_at_2(self):
        logs = original(self)
        if self.step == 2:
            self._stop_requested = True
        return logs

    cwd = os.getcwd()
    try:
        os.chdir(base)
        mp_.setattr(Trainer, "train_step", stop_at_2)
        r = invoke(*RUN)
        assert r.exit_code == 130, r.output
    finally:
        mp_.undo()
        os.chdir(cwd)
    return the_run(base / "runs")


# -- full disk -----------------------------------------------------------------------------------
def test_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint(work, monkeypatch):
    real_fsync = os.fsync
    calls = []

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if ".last.pt." in target:
            calls.append(target)
            if len(calls) == 2:  # the second checkpoint (iteration 4): the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    r = invoke(*RUN)
    line = one_error_line(r)
    assert "cannot write checkpoint" in line and "No space left on device" in line and "--resume" in line
    run = the_run(work / "runs")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2  # still whole and loadable
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]  # no temporary
    assert not (run / "result.json").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the run continues where it was
    r = invoke("run", "--resume", str(run))
    assert r.exit_code == 0, r.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    assert metric_steps(run) == [1, 2, 3, 4, 5, 6]


# -- damaged checkpoints ---------------------------------------------------------------------------
def _truncate(b: bytes) -> bytes:
    return b[: len(b) // 2]


def _flip(offset):
    def damage(b: bytes) -> bytes:
        i = offset(b)
        return b[:i] + bytes([b[i] ^ 0x10]) + b[i + 1:]
    return damage


DAMAGE = {
    "truncated": (_truncate, "corrupt"),
    "bit flip in the weights": (_flip(lambda b: len(b) // 2), "corrupt"),
    "bit flip in the last byte": (_flip(lambda b: len(b) - 1), "corrupt"),
    "bit flip in the stored checksum": (_flip(lambda b: 30), "corrupt"),
    "bit flip in the magic line": (_flip(lambda b: 2), "cannot be loaded safely"),
    "empty file": (lambda b: b"", "cannot be loaded safely"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_by_resume_and_eval(case, interrupted, tmp_path, monkeypatch):
    damage, words = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    monkeypatch.chdir(tmp_path)
    before = snapshot(run)
    for args in (("run", "--resume", str(run)), ("eval", str(run)), ("eval", str(ckpt))):
        r = invoke(*args)
        line = one_error_line(r)
        assert r.exit_code == 2 and str(ckpt) in line and words in line, line
        after = snapshot(run)
        after.pop("run.lock", None)  # the lock file records the pid of its last holder
        before.pop("run.lock", None)
        assert after == before


def test_full_disk_while_logging_is_one_line_and_resumable(work, monkeypatch):
    from udabench.engine.rundir import RunDir

    original = RunDir.append_metrics

    def append(self, record):
        if record["step"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.metrics_file))
        return original(self, record)

    monkeypatch.setattr(RunDir, "append_metrics", append)
    line = one_error_line(invoke(*RUN))
    run = the_run(work / "runs")
    assert "No space left on device" in line and str(run / "metrics.jsonl") in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    monkeypatch.setattr(RunDir, "append_metrics", original)
    assert invoke("run", "--resume", str(run)).exit_code == 0
    assert metric_steps(run) == [1, 2, 3, 4, 5, 6]


def test_a_torn_metrics_line_does_not_stop_resume(interrupted, tmp_path, monkeypatch):
    """A full disk can cut the last metrics line short; resume keeps the whole lines up to its
    checkpoint and logs the rest again."""
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "loss/mo')
    monkeypatch.chdir(tmp_path)
    r = invoke("run", "--resume", str(run))
    assert r.exit_code == 0, r.output
    assert metric_steps(run) == [1, 2, 3, 4, 5, 6]


# -- unwritable output -------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["--out", "--set paths.output_dir"])
def test_an_output_folder_below_a_file_fails_before_training(how, work):
    blocker = work / "a-file"
    blocker.write_text("not a folder")
    target = str(blocker / "runs")
    extra = ["--out", target] if how == "--out" else ["--set", f"paths.output_dir={json.dumps(target)}"]
    before = snapshot(work)
    started = time.perf_counter()
    r = invoke(*RUN, *extra)
    line = one_error_line(r)
    assert "cannot write the run directory" in line and str(blocker) in line
    assert time.perf_counter() - started < 10  # refused at once, no training
    assert snapshot(work) == before and not (work / "runs").exists()


def test_a_read_only_output_folder_fails_before_training(work):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root writing (covered by the file case)")
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = invoke(*RUN, "--out", str(ro))
        assert "cannot write the run directory" in one_error_line(r)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


# -- concurrency: eight processes indexing into one store at once: tested once, in
# tests/test_results_store.py (test_eight_concurrent_writers_lose_nothing); one copy is enough.


@pytest.mark.slow
def test_a_second_run_on_a_training_run_directory_is_refused(tmp_path, data):
    write_toml(tmp_path, data, iters=40, checkpoint_every=10, train_size=(192, 96))
    proc = spawn(tmp_path, *RUN)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = list((tmp_path / "runs").glob("*/*/*/metrics.jsonl"))
            if runs and metric_steps(runs[0].parent):
                break
            assert proc.poll() is None, (tmp_path / "log.out").read_text()
            time.sleep(0.05)
        run = runs[0].parent
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            r = invoke("run", "--resume", str(run))
        finally:
            os.chdir(cwd)
        line = one_error_line(r)
        assert r.exit_code == 2 and "in use by another udabench process" in line and str(run) in line
        assert proc.poll() is None  # the first run was not disturbed ...
        assert proc.wait(timeout=300) == 0, (tmp_path / "log.out").read_text()
        rec = json.loads((run / "result.json").read_text())  # ... and finished normally
        assert rec["iters"] == 40 and metric_steps(run) == list(range(1, 41))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
