"""udabench sweep with the local launcher and real runs (slow): two runs at once give exactly
the results of the same runs made one by one; a cancelled sweep resumes on rerun, names and tags
survive the resume, a reindex and further reruns; a new seed launches only itself."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.faultkit import assert_same_result, env, generate_data, write_toml

pytestmark = pytest.mark.slow


def udabench(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "udabench", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def cli(*args: str):
    """In this process (torch is imported already): for the commands that only read."""
    from click.testing import CliRunner

    from udabench.cli import main

    return CliRunner().invoke(main, list(args))


def spec_file(work: Path, body: str, name: str = "sweep.toml") -> Path:
    path = work / name
    path.write_text(textwrap.dedent(body))
    return path


def run_dirs(out: Path) -> dict[str, Path]:
    return {p.parent.parent.name: p.parent for p in out.glob("*/*/*/result.json")}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sweep-local")
    data = tmp_path_factory.getbasetemp() / "sweep-data"
    generate_data(data)  # once, before runs start side by side
    write_toml(work, data, iters=6, checkpoint_every=2)
    return work


def test_two_at_once_equal_the_same_runs_one_by_one(work):
    spec = spec_file(work, """
        [sweep]
        methods = ["source-only", "adversarial"]
        benchmarks = ["minicity-gta2cs"]
        seeds = [0]
        config = "udabench.toml"
        out = "swept"
        tags = ["local"]
        [grid.methods.adversarial]
        input = ["entropy"]
        [names]
        "methods.adversarial.input=entropy" = "advent"
    """)
    r = udabench(work, "sweep", str(spec), "--jobs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 of 2 launched run(s) ended well" in r.stdout
    # one by one, outside the sweep, with the sweep's fixed default of one thread per run
    for args in (("source-only",), ("adversarial", "--set", "methods.adversarial.input=entropy")):
        one = udabench(work, "run", *args, "-b", "minicity-gta2cs", "--out", "single")
        assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    swept, single = run_dirs(work / "swept"), run_dirs(work / "single")
    assert swept.keys() == single.keys() == {"source-only", "adversarial"}
    for method in swept:
        assert_same_result(swept[method], single[method])
    # they did run side by side: each started before the other ended
    jobs = [json.loads(p.read_text()) for p in (work / "sweep.sweep" / "ledger").glob("*.job.json")]
    t = [(dt.datetime.fromisoformat(j["started"]), dt.datetime.fromisoformat(j["ended"])) for j in jobs]
    assert t[0][0] <= t[1][1] and t[1][0] <= t[0][1], t
    advent = json.loads((swept["adversarial"] / "result.json").read_text())
    assert (advent["name"], advent["tags"]) == ("advent", ["local"])
    # rerun: nothing to do; one more seed: only its two runs
    again = cli("sweep", str(spec))
    assert "2 run(s), 2 done, 0 queued or running, 0 to start" in again.stdout, again.output
    more = spec.read_text().replace("seeds = [0]", "seeds = [0, 1]")
    spec.write_text(more)
    plan = cli("sweep", str(spec), "--dry-run")
    assert "4 run(s), 2 done, 0 queued or running, 2 to start" in plan.stdout, plan.output
    assert plan.stdout.count("would start") == 2 and plan.stdout.count("--seed 1") == 2


def test_cancel_then_rerun_resumes_and_keeps_name_and_tags(work):
    # 200 iterations: `sweep cancel` must land mid-run (a 60-iteration run was stopped at 20 on an
    # idle node: too little margin for a faster one)
    spec = spec_file(work, """
        [sweep]
        methods = ["source-only"]
        benchmarks = ["minicity-gta2cs"]
        seeds = [0]
        config = "udabench.toml"
        out = "cancelled"
        tags = ["local", "resumed"]
        [grid]
        train.iters = [200]
        [names]
        "train.iters=200" = "long"
    """, "cancel.toml")
    sweep = subprocess.Popen([sys.executable, "-m", "udabench", "sweep", str(spec)], cwd=work,
                             env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((work / "cancelled").glob("*/*/*/checkpoints/last.pt")):
            assert sweep.poll() is None and time.monotonic() < deadline, sweep.stdout.read()
            time.sleep(0.2)
        cancel = udabench(work, "sweep", "cancel", str(spec), timeout=120)
        assert cancel.returncode == 0 and "sent SIGTERM to the sweep process" in cancel.stdout, cancel.stdout + cancel.stderr
        output, _ = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    assert sweep.returncode == 143, output
    assert "sweep stopped by SIGTERM: 1 run(s) interrupted" in output
    status = json.loads(cli("sweep", "status", str(spec), "--format", "json").stdout)
    (row,) = status["runs"]
    assert row["state"] == "interrupted" and "stopped by SIGTERM at iteration" in row["error"], row
    stopped_at = int(row["error"].split("at iteration ")[1].split(";")[0])
    assert 0 < stopped_at < 200
    r = cli("sweep", str(spec))
    assert r.exit_code == 0 and "1 to resume" in r.stdout, r.output
    (run,) = run_dirs(work / "cancelled").values()
    log = (work / "cancel.sweep" / "logs" / f"{row['id']}.log").read_text()
    assert "attempt 2 " in log and f"run --resume {run}" in log and "resuming" in log
    record = json.loads((run / "result.json").read_text())
    assert (record["name"], record["tags"], record["iters"]) == ("long", ["local", "resumed"], 200)
    listed = cli("runs", "--reindex", "--format", "json", "--output-dir", str(work / "cancelled"))
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(x["name"], x["tags"]) for x in rows] == [("long", ["local", "resumed"])]
    again = cli("sweep", str(spec))
    assert "1 run(s), 1 done" in again.stdout and "0 to start, 0 to resume" in again.stdout, again.output
    launch = json.loads((work / "cancel.sweep" / "ledger" / f"{row['id']}.launch.json").read_text())
    assert launch["attempt"] == 2  # the first launch and the resume; the reruns launched nothing
