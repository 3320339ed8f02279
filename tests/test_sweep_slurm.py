"""udabench sweep on a real one-node Slurm cluster (slurmctld + slurmd + munged, started by the
``slurm_cluster`` fixture; skipped with the reason where they cannot run). Slow.

The time-limit job is submitted first (by the grid test, through a module fixture) and runs on one
of the node's two CPUs while the other tests use the second; its test comes last.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.faultkit import assert_same_result, env, generate_data, write_toml
from udabench.cli import main

pytestmark = pytest.mark.slow

ITERS = 200  # a few seconds of training: room to cancel a run after its first checkpoint
LONG = 200_000  # far longer than the 1-minute limit allows (3,000 finished in ~35 s on a fast idle node)


def spec(work: Path, name: str, body: str, time_limit: int = 10, delay: int = 60) -> Path:
    path = work / f"{name}.toml"
    path.write_text(textwrap.dedent("""
        [sweep]
        benchmarks = ["minicity-gta2cs"]
        config = "udabench.toml"
        launcher = "slurm"
        tags = ["slurm"]
    """) + textwrap.dedent(body) + textwrap.dedent(f"""
        [slurm]
        time = {time_limit}
        cpus_per_job = 1
        mem_gb = 1
        signal_delay_s = {delay}
        stop_timeout_s = 20
    """))
    return path


def sweep(cluster, work: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    e = {**env(), "SLURM_CONF": str(cluster.conf)}
    return subprocess.run([sys.executable, "-m", "udabench", "sweep", *args], cwd=work, env=e,
                          capture_output=True, text=True, timeout=timeout)


def cli(monkeypatch, cluster, *args: str):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    return CliRunner().invoke(main, list(args))


def status(monkeypatch, cluster, path: Path) -> list[dict]:
    r = cli(monkeypatch, cluster, "sweep", "status", str(path), "--format", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["runs"]


def poll(what, timeout: float, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what.__doc__ or what}")


def one_run_dir(out: Path, method: str = "source-only") -> Path:
    (found,) = [p.parent for p in out.glob(f"*/{method}/*/config.json")]
    return found


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sweep-slurm")
    data = tmp_path_factory.getbasetemp() / "sweep-slurm-data"
    generate_data(data)
    write_toml(work, data, iters=6, checkpoint_every=5)
    return work


@pytest.fixture(scope="module")
def time_limited(slurm_cluster, work) -> Path:
    """Submitted at once: a 1-minute job whose run needs longer (warning signal 5 s before)."""
    path = spec(work, "limited", f"""
        methods = ["source-only"]
        seeds = [0]
        out = "limited"
        [set]
        train.iters = {LONG}
        train.log_every = 20
    """, time_limit=1, delay=5)
    r = sweep(slurm_cluster, work, str(path), timeout=300)
    assert r.returncode == 0 and "submitted 1 Slurm job" in r.stdout, r.stdout + r.stderr
    return path


@pytest.fixture(scope="module")
def grid(slurm_cluster, work, time_limited) -> tuple[Path, subprocess.CompletedProcess]:
    path = spec(work, "grid", f"""
        methods = ["source-only", "adversarial"]
        seeds = [0, 1]
        out = "grid"
        [set]
        train.iters = {ITERS}
    """)
    return path, sweep(slurm_cluster, work, str(path), "--wait", timeout=900)


def test_srun_tasks_join_one_process_group(slurm_cluster):
    """`srun -n 2 udabench ...`: rank, world size and rendezvous come from Slurm's variables."""
    code = ("import os, torch; from udabench.engine.devices import init_distributed; "
            "r, w, l = init_distributed(); t = torch.tensor([r + 1.0]); torch.distributed.all_reduce(t); "
            "print(f'rank {r} of {w} local {l} sum {t.item():g} at {os.environ[\"MASTER_ADDR\"]}')")
    r = slurm_cluster.run("srun", "--ntasks=2", "--cpus-per-task=1", "--mem=1G", sys.executable,
                          "-c", code, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(r.stdout.split("\n")[:2])
    assert lines == [f"rank 0 of 2 local 0 sum 3 at {slurm_cluster.node}",
                     f"rank 1 of 2 local 1 sum 3 at {slurm_cluster.node}"], r.stdout


def test_two_methods_two_seeds_finish_and_reach_the_leaderboard(monkeypatch, slurm_cluster, work, grid):
    path, r = grid
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted 4 Slurm job(s)" in r.stdout
    runs = status(monkeypatch, slurm_cluster, path)
    assert [x["state"] for x in runs] == ["done"] * 4
    board = cli(monkeypatch, slurm_cluster, "leaderboard", "--output-dir", str(work / "grid"),
                "--format", "json")
    assert board.exit_code == 0, board.output
    rows = {row["method"]: row for table in json.loads(board.stdout)["tables"] for row in table["rows"]
            if row["kind"] == "run"}
    assert set(rows) == {"source-only", "adversarial"}
    for method, row in rows.items():
        mine = [json.loads((Path(x["run_dir"]) / "result.json").read_text())["miou"]["19"]
                for x in runs if x["method"] == method]
        assert (row["n"], row["seeds"]) == (2, "0,1")
        assert row["mIoU19"] == pytest.approx(sum(mine) / 2)
    logs = (work / "grid.sweep" / "logs")
    assert len(list(logs.glob("*.log"))) == 4 and list((logs / "slurm").glob("*/*_log.out"))
    # plain progress lines in the run's log (its stdout is no terminal)
    assert re.search(r"step \d+/200 .*it/s", (logs / f"{runs[0]['id']}.log").read_text())


def test_scancel_mid_run_then_rerun_resumes_to_the_same_result(monkeypatch, slurm_cluster, work, grid):
    path = spec(work, "cancel", f"""
        methods = ["source-only"]
        seeds = [0]
        out = "cancelled"
        [grid]
        train.iters = [{ITERS}]
        [names]
        "train.iters={ITERS}" = "cancelled"
    """)
    r = sweep(slurm_cluster, work, str(path))
    assert r.returncode == 0 and "submitted 1 Slurm job" in r.stdout, r.stdout + r.stderr

    def checkpoint_written():
        return list((work / "cancelled").glob("*/*/*/checkpoints/last.pt"))

    poll(checkpoint_written, 300, every=0.1)
    c = cli(monkeypatch, slurm_cluster, "sweep", "cancel", str(path))
    assert c.exit_code == 0 and "cancelled 1 Slurm job" in c.output, c.output

    def interrupted():
        (row,) = status(monkeypatch, slurm_cluster, path)
        return row if row["state"] == "interrupted" else None

    row = poll(interrupted, 120, every=1)
    stopped_at = int(re.search(r"stopped by SIGTERM at iteration (\d+)", row["error"]).group(1))
    assert 0 < stopped_at < ITERS  # stopped mid-run, with a checkpoint
    again = sweep(slurm_cluster, work, str(path), "--wait")
    assert again.returncode == 0 and "1 to resume" in again.stdout, again.stdout + again.stderr
    resumed = one_run_dir(work / "cancelled")
    assert f"run --resume {resumed}" in (work / "cancel.sweep" / "logs" / f"{row['id']}.log").read_text()
    # the same result as the uninterrupted run of the same settings and seed in the grid sweep
    reference = [p.parent for p in (work / "grid").glob("*/source-only/*-s0-*/result.json")]
    assert len(reference) == 1
    assert_same_result(reference[0], resumed)
    # name and tags survive the resume, a reindex and a rerun (which launches nothing)
    record = json.loads((resumed / "result.json").read_text())
    assert (record["name"], record["tags"]) == ("cancelled", ["slurm"])
    listed = cli(monkeypatch, slurm_cluster, "runs", "--reindex", "--format", "json", "--output-dir",
                 str(work / "cancelled"))
    assert [(x["name"], x["tags"]) for x in json.loads(listed.stdout)] == [("cancelled", ["slurm"])]
    rerun = cli(monkeypatch, slurm_cluster, "sweep", str(path))
    assert "1 run(s), 1 done" in rerun.output and "0 to start, 0 to resume" in rerun.output
    launch = json.loads((work / "cancel.sweep" / "ledger" / f"{row['id']}.launch.json").read_text())
    assert launch["attempt"] == 2


def test_time_limit_checkpoints_and_submitit_requeues(monkeypatch, slurm_cluster, work, time_limited):
    """At the warning before the 1-minute limit the job stops its run (checkpoint) and submitit
    requeues it; the requeued job continues the same run directory from that checkpoint."""
    (row,) = status(monkeypatch, slurm_cluster, time_limited)
    log = work / "limited.sweep" / "logs" / f"{row['id']}.log"

    def continued():
        """a stop with a checkpoint in one attempt, then step lines in the next"""
        text = log.read_text() if log.exists() else ""
        parts = text.split("=== udabench sweep")
        # Slurm sends its warning up to a minute early, so the first attempts may stop before
        # their first checkpoint: find the first stop with one, and the attempt after it.
        for i, part in enumerate(parts[1:-1], start=1):
            stopped = re.search(r"stopped by SIGTERM at iteration (\d+); checkpoint written", part)
            later = [int(s) for s in re.findall(rf"step (\d+)/{LONG}", parts[i + 1])]
            if stopped and later:
                return parts[i + 1], int(stopped.group(1)), later
        return None

    def diagnosis() -> str:
        text = log.read_text() if log.exists() else "(no log yet)"
        return (f"log tail:\n{text[-3000:]}\nqueue: {slurm_cluster.queue()}\n"
                f"slurmctld:\n{slurm_cluster.log('slurmctld', 15)}")

    try:
        following, stopped_at, later = poll(continued, 420, every=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnosis()}") from None
    run = one_run_dir(work / "limited")
    assert following.startswith(f" {row['id']} attempt 1 ")  # the same launch: requeued by submitit
    assert f"run --resume {run}" in following
    assert min(later) > stopped_at > 0  # continued from the checkpoint, not from scratch
    out = "\n".join(p.read_text() for p in (work / "limited.sweep" / "logs" / "slurm").glob("*/*_log.out"))
    assert "Requeued job" in out and "timed-out" in out
    launch = json.loads((work / "limited.sweep" / "ledger" / f"{row['id']}.launch.json").read_text())
    assert launch["attempt"] == 1  # no sweep rerun was needed
    cli(monkeypatch, slurm_cluster, "sweep", "cancel", str(time_limited))  # free the node
