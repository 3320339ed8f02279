"""udabench sweep, the fast part: spec files, stable ids, what a rerun launches, the ledger, the
local launcher's slots and process handling (real runs: tests/test_sweep_local.py, Slurm:
tests/test_sweep_slurm.py)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from udabench.cli import main
from udabench.config import parse_set
from udabench.errors import ConfigError, UserError
from udabench.sweep.job import RunTask
from udabench.sweep.launch import NEW, RESUME, SKIP, decide
from udabench.sweep.ledger import FAILED, INTERRUPTED, RUNNING, Ledger, error_line
from udabench.sweep.local import Slot, local_slots, run_local
from udabench.sweep.resolve import resolve_runs
from udabench.sweep.spec import LocalSection, load_spec, run_identity, time_minutes, toml_literal
from udabench.sweep.status import busy_jobs, run_states

SPEC = """
[sweep]
methods = ["source-only", "adversarial"]
benchmarks = ["minicity-gta2cs"]
seeds = [0, 1]
tags = ["ablation"]
out = "runs"

[set]
train.iters = 4

[grid.methods.adversarial]
input = ["softmax", "entropy"]

[names]
"methods.adversarial.input=entropy" = "advent"
"""


def write(folder: Path, text: str = SPEC, name: str = "sweep.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_expansion_names_tags_and_method_specific_grid_keys(tmp_path):
    runs = load_spec(write(tmp_path)).runs()
    # source-only: 2 seeds (the adversarial grid key does not reach it); adversarial: 2 x 2
    assert [(r.method, r.name, r.seed) for r in runs] == [
        ("source-only", None, 0), ("source-only", None, 1),
        ("adversarial", None, 0), ("adversarial", None, 1),
        ("adversarial", "advent", 0), ("adversarial", "advent", 1)]
    assert all(r.tags == ("ablation",) for r in runs)
    assert dict(runs[0].settings) == {"train.iters": 4}
    assert dict(runs[4].settings) == {"train.iters": 4, "methods.adversarial.input": "entropy"}
    assert len({r.id for r in runs}) == 6


def test_ids_are_stable_when_seeds_and_grid_values_are_added(tmp_path):
    before = {(r.method, r.settings, r.seed): r.id for r in load_spec(write(tmp_path)).runs()}
    more = SPEC.replace("seeds = [0, 1]", "seeds = \"0-2\"").replace(
        'input = ["softmax", "entropy"]', 'input = ["entropy", "softmax", "maxsquare"]')
    after = {(r.method, r.settings, r.seed): r.id for r in load_spec(write(tmp_path, more)).runs()}
    assert all(after[k] == v for k, v in before.items())  # old runs keep their ids
    assert len(after) == 3 + 3 * 3
    # the id depends on what defines a run, not on names, tags or the order of settings
    a = run_identity("m", "b", 0, (("train.iters", 4), ("model.x", "y")))
    assert a == run_identity("m", "b", 0, (("model.x", "y"), ("train.iters", 4)))
    assert a != run_identity("m", "b", 0, (("model.x", "y"), ("train.iters", 5)))
    assert a != run_identity("m", "b", 1, (("model.x", "y"), ("train.iters", 4)))


@pytest.mark.parametrize("value", [3, -2, 0.1, 1e-7, 2.0, True, False, "entropy", "a \"quoted\" b",
                                   "näive\\path", [1.0, 1.5], ["a", "b"], {"height": 48, "w": 2.5}])
def test_set_values_travel_unchanged(value):
    """What the sweep writes after --set, `udabench run` reads back as the same value."""
    _, parsed = parse_set(f"train.x={toml_literal(value)}")
    assert parsed == value and type(parsed) is type(value)


def test_time_limits_in_slurm_formats():
    assert [time_minutes(t) for t in ("90", "1:30", "2:00:00", "1-00", "1-2:30", "0:0:30")] == \
        [90, 2, 120, 1440, 1590, 1]
    with pytest.raises(ValueError):
        time_minutes("soon")


@pytest.mark.parametrize("edit, words", [
    (("[set]", "[sett]"), ["unknown section [sett]", "did you mean"]),
    (('input = ["softmax", "entropy"]', 'input = "entropy"'), ["grid.methods.adversarial.input", "list"]),
    (('input = ["softmax", "entropy"]', 'input = ["a", "a"]'), ["distinct"]),
    (('"methods.adversarial.input=entropy"', '"methods.adversarial.input=entropie"'), ["entropie", "not one of"]),
    (("[grid.methods.adversarial]", "[grid.methods.adversarail]"), ["adversarail", "not in [sweep] methods"]),
    (("seeds = [0, 1]", 'seeds = "0-x"'), ["sweep.seeds", "range"]),
    (("seeds = [0, 1]", "seeds = [1, 1]"), ["distinct"]),
    (("train.iters = 4", "train.iters = 4\n[slurm]\ntime = \"soon\""), ["slurm.time", "HH:MM:SS"]),
    (("train.iters = 4", "train.iters = 4\n[local]\njobz = 2"), ["local: unknown key 'jobz'", "jobs"]),
    (('tags = ["ablation"]', 'tags = ["ablation"]\nlauncher = "cloud"'), ["sweep.launcher", "slurm"]),
])
def test_spec_mistakes_are_one_line_naming_file_and_key(tmp_path, edit, words):
    path = write(tmp_path, SPEC.replace(*edit))
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert all(w in msg for w in words), msg


def test_bad_setting_is_refused_before_anything_is_launched(tmp_path):
    """Resolving checks every run's settings: a misspelt key names the sweep file and the run."""
    path = write(tmp_path, SPEC.replace("train.iters = 4", "train.iterz = 4"))
    r = CliRunner().invoke(main, ["sweep", str(path), "--dry-run"])
    assert r.exit_code == 2, r.output
    assert str(path) in r.output and "iterz" in r.output and "did you mean" in r.output
    assert not (tmp_path / "sweep.sweep").exists() and not (tmp_path / "runs").exists()


def _finished_run(out: Path, resolved, **extra) -> Path:
    """A finished run directory of this run's exact config hash and seed, indexed."""
    from tests.results_kit import make_run
    from udabench.registry import BENCHMARKS
    from udabench.results.store import index_run, store_path

    run = resolved.run
    mats = np.tile(np.eye(19, dtype=np.int64)[None] * 10, (2, 1, 1))
    d = make_run(out, run.method, run.seed, mats, config=resolved.config_hash,
                 spec=BENCHMARKS.get(run.benchmark).hash(), modern=True, **extra)
    index_run(store_path(out), d)
    return d


def _interrupted_run(out: Path, resolved) -> Path:
    run = resolved.run
    d = out / run.benchmark / run.method / f"20261201-000000-s{run.seed}-{resolved.config_hash[:6]}"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return d


def test_a_rerun_skips_done_resumes_interrupted_and_reports_failed(tmp_path):
    spec = load_spec(write(tmp_path))
    resolved = resolve_runs(spec)
    out = tmp_path / "runs"
    ledger = Ledger(spec.folder()).create()
    done = _finished_run(out, resolved[0])  # made by anyone: found through the run store
    stopped = _interrupted_run(out, resolved[1])
    for res, state, run_dir, error in ((resolved[1], INTERRUPTED, str(stopped), "stopped by SIGTERM"),
                                       (resolved[2], FAILED, None, "dataset missing")):
        ledger.record_launch(res.run.id, config_hash=res.config_hash, launcher="local")
        ledger.record_job(res.run.id, state, attempt=1, run_dir=run_dir, error=error)
    # launched once for other settings (the settings file changed since): pending again
    ledger.record_launch(resolved[3].run.id, config_hash="0123456789ab", launcher="local")
    ledger.record_job(resolved[3].run.id, FAILED, attempt=1, error="old failure")
    states = run_states(resolved, ledger)
    assert [s.state for s in states] == ["done", "interrupted", "failed", "pending", "pending", "pending"]
    assert states[0].run_dir == str(done) and states[2].error == "dataset missing"
    steps = decide(states, retry_failed=False)
    assert [s.action for s in steps] == [SKIP, RESUME, SKIP, NEW, NEW, NEW]
    assert steps[1].state.resume_dir() == str(stopped)
    assert [s.action for s in decide(states, retry_failed=True)][2] == NEW  # no run dir: a new run
    # the dry run says the same, and shows the commands
    r = CliRunner().invoke(main, ["sweep", str(spec.path), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "6 run(s), 1 done, 0 queued or running, 3 to start, 1 to resume" in r.output
    assert f"--resume {stopped}" in r.output and "failed source-only" not in r.output
    assert "failed adversarial minicity-gta2cs s0: dataset missing" in r.output
    assert "--name advent" in r.output and "--tag ablation" in r.output


WARM_SPEC = """
[sweep]
methods = ["source-only", "self-training"]
benchmarks = ["minicity-gta2cs"]
seeds = [0]
out = "runs"

[set]
train.iters = 4
"""


def test_a_warm_starting_run_is_done_when_its_source_and_itself_are_finished(tmp_path):
    """CBST starts from the finished source-only run of its seed and network, whatever its own
    BatchNorm mode (the sweep once looked for a source run with CBST's model settings, found
    none, and launched finished CBST runs again). The hash the sweep expects equals the one of
    the same run started from that source run's directory by hand."""
    spec = load_spec(write(tmp_path, WARM_SPEC))
    source, cbst = resolve_runs(spec)
    assert source.config_hash and cbst.config_hash is None  # its source is not finished yet
    out = tmp_path / "runs"
    source_dir = _finished_run(out, source)
    (source_dir / "checkpoints").mkdir()
    (source_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
    cbst = resolve_runs(spec)[1]
    by_hand = resolve_runs(load_spec(write(
        tmp_path, WARM_SPEC + f'train.init_from = "{source_dir}"\n', name="by_hand.toml")))[1]
    assert cbst.config_hash is not None and cbst.config_hash == by_hand.config_hash
    assert cbst.config_hash != source.config_hash
    ledger = Ledger(spec.folder()).create()
    assert [s.state for s in run_states([source, cbst], ledger)] == ["done", "pending"]
    cbst_dir = _finished_run(out, cbst)
    states = run_states([source, cbst], ledger)
    assert [s.state for s in states] == ["done", "done"] and states[1].run_dir == str(cbst_dir)


def test_status_json_and_table(tmp_path):
    spec = load_spec(write(tmp_path))
    resolved = resolve_runs(spec)
    _finished_run(tmp_path / "runs", resolved[4], name="advent")
    r = CliRunner().invoke(main, ["sweep", "status", str(spec.path), "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["counts"] == {"pending": 5, "queued": 0, "running": 0, "done": 1, "interrupted": 0,
                              "failed": 0}
    row = next(x for x in data["runs"] if x["state"] == "done")
    assert (row["name"], row["settings"]["methods.adversarial.input"]) == ("advent", "entropy")
    r = CliRunner().invoke(main, ["sweep", "status", str(spec.path)], env={"COLUMNS": "220"})
    assert r.exit_code == 0 and "advent" in r.output and "5 pending, 1 done" in r.output


def test_error_line_of_a_run_log(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("=== udabench sweep a attempt 1\nerror: old attempt's line\n"
                   "=== udabench sweep a attempt 2\nstep 2/6\nerror: cannot write x (No space left)\n")
    assert error_line(log, 2) == "cannot write x (No space left)"
    log.write_text("=== udabench sweep a attempt 1\nTraceback (most recent call last):\n"
                   '  File "x.py", line 1, in <module>\n    boom()\nZeroDivisionError: division by zero\n')
    assert error_line(log, 1) == "ZeroDivisionError: division by zero"
    log.write_text("=== udabench sweep a attempt 1\nstep 2/6\n")
    assert error_line(log, -9) == "killed by SIGKILL" and error_line(log, 3) == "exited with status 3"


def test_local_slots_never_oversubscribe():
    cpu = local_slots(LocalSection(), None, [], cores=4)
    assert len(cpu) == 4 and all(s.env["OMP_NUM_THREADS"] == "1" for s in cpu)
    two = local_slots(LocalSection(threads_per_job=2), None, [], cores=5)
    assert len(two) == 2 and two[0].env["OMP_NUM_THREADS"] == "2"
    with pytest.raises(UserError, match="exceed the 2 CPU core"):
        local_slots(LocalSection(threads_per_job=2), 2, [], cores=2)
    gpus = local_slots(LocalSection(), None, ["3", "5", "6"], cores=12)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpus] == ["3", "5", "6"]
    assert all(s.nproc == 1 and s.env["OMP_NUM_THREADS"] == "4" for s in gpus)
    pairs = local_slots(LocalSection(gpus_per_job=2), None, ["0", "1", "2", "3", "4"], cores=8)
    assert [(s.env["CUDA_VISIBLE_DEVICES"], s.nproc) for s in pairs] == [("0,1", 2), ("2,3", 2)]
    with pytest.raises(UserError, match="--jobs 3 needs 6 GPUs"):
        local_slots(LocalSection(gpus_per_job=2), 3, ["0", "1", "2", "3"], cores=8)
    cpu_only = local_slots(LocalSection(gpus_per_job=0), 1, ["0"], cores=8)
    assert cpu_only[0].env["CUDA_VISIBLE_DEVICES"] == ""  # GPUs kept out of a CPU run's sight


@dataclass
class ScriptTask(RunTask):
    """A task whose process is a small Python script instead of `udabench run` (the launcher's
    scheduling and signal handling, tested in a second)."""

    script: str = ""

    def command(self, python=None):
        return [sys.executable, "-c", self.script]


def _script_task(tmp_path: Path, name: str, body: str) -> ScriptTask:
    script = textwrap.dedent(f"""
        import json, os, sys, time
        open({str(tmp_path / name)!r} + ".start", "w").write(json.dumps(
            {{"t": time.time(), "omp": os.environ.get("OMP_NUM_THREADS"),
              "own_group": os.getpgid(0) == os.getpid()}}))
    """) + textwrap.dedent(body)
    return ScriptTask(name, name, [], "m", "b", 0, str(tmp_path / "out"), None, str(tmp_path),
                      str(tmp_path / "sw"), script=script)


def test_local_launcher_runs_n_at_once_in_their_own_groups(tmp_path):
    tasks = [_script_task(tmp_path, f"t{i}", "time.sleep(0.6)") for i in range(3)]
    tasks.append(_script_task(tmp_path, "bad", "print('error: something is wrong', file=sys.stderr); sys.exit(2)"))
    slots = [Slot({"OMP_NUM_THREADS": "1"}, 1, "CPU") for _ in range(2)]
    ledger = Ledger(tmp_path / "sw").create()
    lines: list[str] = []
    ended = run_local(tasks, slots, ledger, lambda t: {"launcher": "local"}, lines.append, poll_s=0.05)
    starts = sorted(json.loads((tmp_path / f"{t.run_id}.start").read_text())["t"] for t in tasks)
    assert starts[2] - starts[0] > 0.4  # the third waited for a free slot
    assert all(json.loads((tmp_path / f"{t.run_id}.start").read_text())["own_group"] for t in tasks)
    assert json.loads((tmp_path / "t0.start").read_text())["omp"] == "1"
    by_id = {r["run_id"]: r for r in ended}
    assert by_id["bad"]["state"] == FAILED and by_id["bad"]["error"] == "something is wrong"
    assert ledger.job("bad")["returncode"] == 2 and ledger.launch("bad")["attempt"] == 1
    assert ledger.launcher() is None  # cleared when the launcher ends
    assert any("failed bad: something is wrong" in line for line in lines)


def test_sigterm_reaches_every_run_and_stops_the_sweep(tmp_path):
    """SIGTERM (`sweep cancel`) to the launcher: passed to each run's process group; no new run
    starts; the sweep exits 143 saying how many runs stopped."""
    body = """
        import signal
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
        time.sleep(30)
    """
    tasks = [_script_task(tmp_path, f"t{i}", body) for i in range(3)]
    slots = [Slot({}, 1, "CPU") for _ in range(2)]
    ledger = Ledger(tmp_path / "sw").create()
    killer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time, signal, pathlib
        end = time.time() + 20
        while time.time() < end and len(list(pathlib.Path({str(tmp_path)!r}).glob("*.start"))) < 2:
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill({os.getpid()}, signal.SIGTERM)
    """)])
    started = time.monotonic()
    try:
        with pytest.raises(UserError) as err:
            run_local(tasks, slots, ledger, lambda t: {"launcher": "local"}, lambda line: None, poll_s=0.05)
    finally:
        killer.wait(timeout=30)
    assert time.monotonic() - started < 15
    assert err.value.exit_code == 128 + signal.SIGTERM
    assert "2 run(s) interrupted" in str(err.value) and "1 not started" in str(err.value)
    assert [ledger.job(f"t{i}")["state"] for i in range(2)] == [INTERRUPTED, INTERRUPTED]
    assert ledger.job("t2") is None and ledger.launch("t2") is None  # never launched: still pending


def test_cancel_reads_the_ledger_only(tmp_path):
    """cancel finds what runs from the ledger: Slurm jobs still in the queue, and local process
    groups still alive as `udabench` processes (a recycled pid is never signalled)."""
    ledger = Ledger(tmp_path).create()
    ledger.record_launch("a", launcher="slurm", job_id="17_0")
    ledger.record_launch("b", launcher="slurm", job_id="17_1")
    ledger.record_launch("c", launcher="local")
    ledger.record_launch("d", launcher="local")
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "udabench"],
                           start_new_session=True)
    try:
        ledger.record_job("c", RUNNING, attempt=1, pid=run.pid, pgid=run.pid)
        other = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, check=True, timeout=30)
        ledger.record_job("d", RUNNING, attempt=1, pid=int(other.stdout), pgid=int(other.stdout))
        slurm_ids, groups = busy_jobs(["a", "b", "c", "d"], ledger, queue=lambda: {"17_1": "RUNNING"})
        assert slurm_ids == ["17_1"] and groups == [run.pid]
    finally:
        run.kill()
        run.wait(timeout=30)
    assert busy_jobs(["c"], ledger, queue=lambda: {})[1] == []


def test_sweep_is_listed_with_its_subcommands():
    r = CliRunner().invoke(main, ["sweep", "--help"])
    assert r.exit_code == 0 and all(w in r.output for w in ("launch", "status", "cancel"))
    r = CliRunner().invoke(main, ["sweep", "missing.toml"])
    assert r.exit_code == 2 and "sweep file missing.toml does not exist" in r.output


def test_one_launcher_at_a_time_and_no_slurm_is_one_line(tmp_path, monkeypatch):
    spec = write(tmp_path)
    held = Ledger(load_spec(spec).folder()).lock()
    try:
        r = CliRunner().invoke(main, ["sweep", str(spec)])
    finally:
        held.close()
    assert r.exit_code == 2 and "another `udabench sweep` is launching this sweep (pid" in r.output, r.output
    assert not list((tmp_path / "sweep.sweep" / "ledger").glob("*.json"))  # nothing launched
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, srun, ... here
    r = CliRunner().invoke(main, ["sweep", str(spec), "--launcher", "slurm"])
    assert r.exit_code == 2 and "no Slurm here (sbatch, srun, squeue, scancel not found)" in r.output, r.output


def test_srun_variables_become_torchrun_variables(monkeypatch):
    """`srun -n 4 udabench run`: a job step's Slurm variables give rank, size and rendezvous; a
    batch script's (no step) and torchrun's own variables are left alone."""
    from udabench.engine.devices import first_host, slurm_to_torchrun

    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_NUM_TASKS",
             "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")  # a batch script: the job's tasks, not this process's
    slurm_to_torchrun()
    assert "WORLD_SIZE" not in os.environ
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[07-08],cpu1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    slurm_to_torchrun()
    got = {k: os.environ[k] for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}
    assert got == {"WORLD_SIZE": "4", "RANK": "3", "MASTER_ADDR": "gpu07", "MASTER_PORT": "23456"}
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # the task's local id; with GPUs, an index among those the task sees (srun may show it one)
    assert os.environ["LOCAL_RANK"] == str(1 % gpus if gpus else 1)
    monkeypatch.setenv("WORLD_SIZE", "8")  # torchrun inside the step: its variables win
    monkeypatch.setenv("RANK", "5")
    slurm_to_torchrun()
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"]) == ("8", "5")
    assert [first_host(x) for x in ("n1", "a[009-011]", "x[2,5]-ib,y", "p,q")] == ["n1", "a009", "x2-ib", "p"]


def test_commands_are_argument_lists_with_torchrun_for_several_gpus(tmp_path):
    spec = load_spec(write(tmp_path))
    (res,) = [r for r in resolve_runs(spec) if r.run.name == "advent" and r.run.seed == 1]
    task = RunTask(res.run.id, res.run.label(), res.udabench_args(), "adversarial", "minicity-gta2cs", 1,
                   str(res.output_dir), res.config_hash[:6], str(tmp_path), str(tmp_path / "sw"))
    cmd = task.command("py")
    assert cmd[:5] == ["py", "-m", "udabench", "run", "adversarial"]
    pairs = list(zip(cmd, cmd[1:]))
    for pair in (("--benchmark", "minicity-gta2cs"), ("--seed", "1"), ("--out", str(tmp_path / "runs")),
                 ("--set", 'methods.adversarial.input="entropy"'), ("--set", "train.iters=4"),
                 ("--name", "advent"), ("--tag", "ablation")):
        assert pair in pairs, (pair, cmd)
    multi = dataclasses.replace(task, nproc=4).resuming(tmp_path / "run")
    assert multi.command("py") == ["py", "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node=4", "-m", "udabench", "run", "--resume",
                                   str(tmp_path / "run")]
