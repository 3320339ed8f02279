"""The researcher's loop around the trainer: trackers, kept and best checkpoints, plain progress
lines for cluster logs, and scheduler signals that checkpoint and exit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from udabench.engine.checkpoint import load_checkpoint
from udabench.engine.loggers import Trackers, open_trackers
from udabench.engine.progress import TrainProgress, progress_line
from udabench.engine.trainer import Interrupted, Preempted
from udabench.errors import UserError
from tests.test_engine_units import make_trainer
from tests.helpers import tiny_toml


def test_progress_line_reads_like_a_log():
    line = progress_line(20, 300, {"loss/model": 1.23456, "ce": 3.0, "lr": 0.0095}, 2.0)
    assert line == "step 20/300 | loss/model 1.235 | lr 0.0095 | 2.00 it/s | ETA 2m20s"
    assert "ETA" not in progress_line(300, 300, {}, 2.0)


def test_plain_progress_when_not_a_terminal(capsys):
    with TrainProgress(10, 0, enabled=True, plain=True) as bar:
        bar.advance(5)
        bar.report(5, {"loss/model": 0.5, "lr": 0.1}, 1.0)
    assert capsys.readouterr().out == "step 5/10 | loss/model 0.5 | lr 0.1 | 1.00 it/s | ETA 0m05s\n"


def test_kept_and_best_checkpoints_are_recorded(tmp_path):
    t = make_trainer(tmp_path, iters=8, checkpoint_every=2, keep_checkpoints=2, best_checkpoint=True,
                     eval_every=2)
    scores = iter([10.0, 30.0, 20.0])
    t.evaluate = lambda step: {"eval/mIoU19": next(scores), "eval/IoU/road": 1.0}
    t.fit({})
    kept = sorted(p.name for p in t.run_dir.periodic_checkpoints())
    assert kept == ["iter_6.pt", "iter_8.pt"]  # the 2 newest periodic checkpoints
    assert t.best == {"step": 4, "key": "eval/mIoU19", "value": 30.0}
    assert load_checkpoint(t.run_dir.best_checkpoint)["step"] == 4
    assert load_checkpoint(t.run_dir.checkpoint_at(8))["step"] == 8
    assert load_checkpoint(t.run_dir.checkpoint)["best"] == t.best  # resume keeps the best
    lines = [json.loads(l) for l in t.run_dir.metrics_file.read_text().splitlines()]
    assert [l["eval/mIoU19"] for l in lines if "eval/mIoU19" in l] == [10.0, 30.0, 20.0]


@pytest.mark.parametrize("sig,error,code", [(signal.SIGTERM, Preempted, 143),
                                            (signal.SIGUSR1, Preempted, 143),
                                            (signal.SIGINT, Interrupted, 130)])
def test_scheduler_signals_checkpoint_and_exit(tmp_path, sig, error, code):
    t = make_trainer(tmp_path, iters=10, checkpoint_every=100)
    original = t.train_step

    def step_then_signal():
        logs = original()
        if t.step == 3:
            os.kill(os.getpid(), sig)
        return logs

    t.train_step = step_then_signal
    with pytest.raises(error) as e:
        t.fit({})
    assert e.value.exit_code == code and f"udabench run --resume {t.run_dir.path}" in str(e.value)
    assert load_checkpoint(t.run_dir.checkpoint)["step"] == 3
    assert signal.getsignal(sig) is not t._on_signal  # handlers restored


@pytest.mark.slow  # W&B's service takes seconds to start
def test_tensorboard_and_wandb_offline_receive_scalars_images_and_config(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "20261203-000000-s0-abcdef"
    run.mkdir()
    config = {"method": "source-only", "name": "demo", "seed": 0}
    trackers = open_trackers(("tensorboard", "wandb"), run, 0, config, "udabench-test", "offline", True)
    trackers.scalars(1, {"loss/model": 2.0, "lr": 0.1, "bad": float("nan")})
    trackers.scalars(2, {"loss/model": 1.5, "eval/mIoU19": 12.5})
    trackers.images(2, {"eval/panel/a": np.zeros((4, 12, 3), np.uint8)})
    trackers.close()
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss/model")] == [(1, 2.0), (2, 1.5)]
    assert "bad" not in acc.Tags()["scalars"]  # non-finite values are not plotted
    assert acc.Tags()["images"] == ["eval/panel/a"] and "config/text_summary" in acc.Tags()["tensors"]
    offline = list((run / "wandb").glob(f"offline-run-*-{run.name}"))  # W&B run id = run id
    assert len(offline) == 1
    records = next(offline[0].glob("run-*.wandb")).read_bytes()  # W&B's offline record log
    for text in (b"source-only", b"loss/model", b"eval/mIoU19", b"udabench-test"):
        assert text in records, text
    assert list(offline[0].glob("files/media/images/eval/panel/a_2_*.png"))


def test_missing_tracker_package_is_one_line(monkeypatch):
    import importlib.util

    from udabench.engine.loggers import check_loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(UserError, match="train.loggers includes 'wandb' but the wandb package is not installed"):
        check_loggers(("tensorboard", "wandb"))
    assert Trackers([]).wants_images is False


@pytest.mark.slow
def test_a_cluster_job_log_has_progress_lines_and_sigterm_resumes_exactly(tmp_path):
    """`udabench run` with stdout to a file (a Slurm log): plain lines; SIGTERM -> checkpoint,
    exit 143; --resume finishes with the result of an uninterrupted run."""
    data = tmp_path / "data"
    (tmp_path / "udabench.toml").write_text(tiny_toml(data, tmp_path / "runs", iters=40, log_every=4,
                                                      checkpoint_every=100))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("UDABENCH_DATA", None)

    def run(*args, **kw):
        return subprocess.run([sys.executable, "-m", "udabench", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600, **kw)

    straight = run("run", "source-only", "-b", "minicity-gta2cs", "--out", "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    lines = [l for l in straight.stdout.splitlines() if l.startswith("step ")]
    assert [l.split(" | ")[0] for l in lines] == [f"step {s}/40" for s in range(4, 41, 4)]
    assert "it/s" in lines[0] and "loss/model" in lines[0] and "ETA" in lines[0]

    log = open(tmp_path / "job.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "udabench", "run", "source-only", "-b",
                             "minicity-gta2cs", "--out", "cut"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while "step 8/40" not in (tmp_path / "job.log").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    text = (tmp_path / "job.log").read_text()
    assert "stopped by SIGTERM at iteration" in text and "Traceback" not in text
    cut = next((tmp_path / "cut").glob("*/*/*/config.json")).parent
    step = load_checkpoint(cut / "checkpoints" / "last.pt")["step"]
    assert 8 <= step < 40
    resumed = run("run", "--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads(next((tmp_path / "straight").glob("*/*/*/result.json")).read_text())
    b = json.loads((cut / "result.json").read_text())
    assert a["iou"] == b["iou"] and a["miou"] == b["miou"]


@pytest.mark.slow
def test_a_run_with_tensorboard_logs_eval_scalars_and_panels(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from udabench.cli import main

    (tmp_path / "udabench.toml").write_text(tiny_toml(tmp_path / "data", tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["run", "source-only", "-b", "minicity-gta2cs", "--set",
                                  'train.loggers=["tensorboard"]', "--set", "train.eval_every=4",
                                  "--set", "train.best_checkpoint=true", "--set", "train.keep_checkpoints=1"])
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs").glob("*/*/*/result.json")).parent
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("eval/mIoU19")] == [4, 6] and "loss/model" in tags["scalars"]
    assert "eval/IoU/road" in tags["scalars"] and len(tags["images"]) == 2  # two validation panels
    rec = json.loads((run / "result.json").read_text())
    assert rec["checkpoints"]["best"]["key"] == "eval/mIoU19" and rec["checkpoints"]["kept"] == ["iter_6.pt"]
    assert rec["eval"]["checkpoint"] == "last"  # the result is the last checkpoint's, always


def test_a_stop_signal_during_the_final_evaluation_is_held_until_the_result_is_written():
    from udabench.engine.runner import hold_stop_signals

    before = signal.getsignal(signal.SIGTERM)
    with hold_stop_signals() as held:
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the hold
        os.kill(os.getpid(), signal.SIGUSR1)
    assert held == [signal.SIGTERM, signal.SIGUSR1]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_with_loader_workers_still_checkpoints(tmp_path):
    """`sweep cancel`, scancel and Slurm's warning signal every process of the job: the loader
    workers must leave the signal to the run (which checkpoints, exit 143), not die of it first."""
    data = tmp_path / "data"
    (tmp_path / "udabench.toml").write_text(tiny_toml(data, tmp_path / "runs", iters=40, log_every=4,
                                                      checkpoint_every=100))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("UDABENCH_DATA", None)
    args = ["run", "source-only", "-b", "minicity-gta2cs", "--set", "train.num_workers=2"]
    straight = subprocess.run([sys.executable, "-m", "udabench", *args, "--out", "straight"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    log = open(tmp_path / "job.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "udabench", *args, "--out", "cut"], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while "step 8/40" not in (tmp_path / "job.log").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # the run and its loader workers, as scancel does
    assert proc.wait(timeout=120) == 143, (tmp_path / "job.log").read_text()[-2000:]
    text = (tmp_path / "job.log").read_text()
    assert "stopped by SIGTERM at iteration" in text and "Traceback" not in text
    cut = next((tmp_path / "cut").glob("*/*/*/config.json")).parent
    resumed = subprocess.run([sys.executable, "-m", "udabench", "run", "--resume", str(cut)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads(next((tmp_path / "straight").glob("*/*/*/result.json")).read_text())
    b = json.loads((cut / "result.json").read_text())
    assert a["iou"] == b["iou"] and a["miou"] == b["miou"]
