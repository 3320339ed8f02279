"""``udabench sweep``: decide what each run of a sweep needs, then launch only that.

done -> skipped; queued or running -> left alone; interrupted -> ``--resume`` of its run
directory (a new run when it stopped before making one); failed -> reported, relaunched only
with ``retry_failed``; pending -> a new run. Rerunning a sweep is therefore always safe, and
adding seeds or grid values to its file launches only the new runs.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from udabench.errors import UserError
from udabench.sweep.job import RunTask
from udabench.sweep.ledger import FAILED, INTERRUPTED, RUNNING, Ledger
from udabench.sweep.resolve import Resolved, resolve_runs
from udabench.sweep.spec import SweepSpec
from udabench.sweep.status import DONE, PENDING, QUEUED, RunState, run_states

NEW, RESUME, SKIP = "new", "resume", "skip"


@dataclass
class Step:
    state: RunState
    action: str  # new | resume | skip
    why: str = ""


def decide(states: list[RunState], retry_failed: bool) -> list[Step]:
    steps = []
    for st in states:
        if st.state == DONE:
            steps.append(Step(st, SKIP, "done"))
        elif st.state in (QUEUED, RUNNING):
            steps.append(Step(st, SKIP, f"{st.state} ({st.where})" if st.where else st.state))
        elif st.state == FAILED and not retry_failed:
            steps.append(Step(st, SKIP, f"failed: {st.error} (--retry-failed relaunches it)"))
        elif st.state in (INTERRUPTED, FAILED) and st.resume_dir():
            steps.append(Step(st, RESUME, st.resume_dir() or ""))
        else:
            steps.append(Step(st, NEW, st.state if st.state != PENDING else ""))
    return steps


def make_task(step: Step, ledger: Ledger, cwd: str) -> RunTask:
    res = step.state.resolved
    run = res.run
    return RunTask(run.id, run.label(), res.udabench_args(), run.method, run.benchmark, run.seed,
                   str(res.output_dir), (res.config_hash or "")[:6] or None, cwd, str(ledger.folder),
                   resume_dir=step.state.resume_dir() if step.action == RESUME else None)


def launch_fields(resolved: dict[str, Resolved]) -> Callable[[RunTask], dict[str, Any]]:
    def fields(task: RunTask) -> dict[str, Any]:
        res = resolved[task.run_id]
        return {"config_hash": res.config_hash, "label": task.label, "resume_dir": task.resume_dir,
                "launcher": "local", "job_id": None}
    return fields


def summary_line(steps: list[Step]) -> str:
    new = sum(s.action == NEW for s in steps)
    resume = sum(s.action == RESUME for s in steps)
    done = sum(s.state.state == DONE for s in steps)
    busy = sum(s.state.state in (QUEUED, RUNNING) for s in steps)
    failed = sum(s.action == SKIP and s.state.state == FAILED for s in steps)
    parts = [f"{len(steps)} run(s)", f"{done} done", f"{busy} queued or running",
             f"{new} to start", f"{resume} to resume"]
    if failed:
        parts.append(f"{failed} failed (not retried)")
    return ", ".join(parts)


def run_sweep(spec: SweepSpec, launcher: str, jobs: int | None, dry_run: bool, retry_failed: bool,
              say: Callable[[str], None]) -> tuple[list[Step], list[dict[str, Any]]]:
    """Launch what the sweep still needs. Local: runs them now and returns their job records;
    Slurm: submits one job array and returns (the jobs run on their own)."""
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs}: expected a positive number of concurrent runs")
    ledger = Ledger(spec.folder())
    resolved = resolve_runs(spec)
    steps = decide(run_states(resolved, ledger), retry_failed)
    cwd = os.getcwd()
    todo = [s for s in steps if s.action != SKIP]
    slots = None
    if launcher == "local" and todo:
        from udabench.sweep.local import cpu_cores, local_slots, visible_gpus

        slots = local_slots(spec.local, jobs, visible_gpus(), cpu_cores())
    elif launcher == "slurm" and todo:
        from udabench.sweep.slurm import _submitit, check_slurm, sbatch_parameters

        _submitit()
        if not dry_run:
            check_slurm()
        sbatch_parameters(spec.slurm, jobs, spec.title)
    say(f"sweep {spec.path.name}: {summary_line(steps)}; folder {ledger.folder}")
    for step in steps:
        if step.action == SKIP and step.state.state == FAILED:
            say(f"  failed {step.state.run.label()}: {step.state.error}")
    tasks = [make_task(s, ledger, cwd) for s in todo]
    if launcher == "slurm":
        g = spec.slurm.gpus_per_job
        tasks = [_configure_slurm(t, spec, g) for t in tasks]
    if dry_run:
        for step, task in zip(todo, tasks):
            verb = "resume" if step.action == RESUME else "start"
            say(f"  would {verb} {task.label} [{task.run_id}]: {shlex.join(task.command(sys.executable))}")
        return steps, []
    if not tasks:
        return steps, []
    by_id = {r.run.id: r for r in resolved}
    lock = ledger.lock()
    try:
        # decided again under the lock: another sweep may have launched some of them meanwhile
        again = {s.state.run.id: (s.action, s.state.resume_dir())
                 for s in decide(run_states(resolved, ledger), retry_failed)}
        if any(again[s.state.run.id] != (s.action, s.state.resume_dir()) for s in todo):
            raise UserError("runs of this sweep were launched while it was being planned (another "
                            "`udabench sweep` of this file?); run it again")
        if launcher == "local":
            from udabench.sweep.local import run_local

            return steps, run_local(tasks, slots, ledger, launch_fields(by_id), say)
        from udabench.sweep.slurm import submit

        fields = launch_fields(by_id)
        ids = submit(tasks, spec.slurm, ledger, jobs, spec.title,
                     lambda t: {k: v for k, v in fields(t).items() if k not in ("launcher", "job_id")})
    finally:
        lock.close()
    say(f"submitted {len(ids)} Slurm job(s): {_id_range(ids)}; logs in {ledger.slurm_folder}; "
        f"`udabench sweep status {spec.path}` follows them")
    return steps, []


def _configure_slurm(task: RunTask, spec: SweepSpec, gpus: int) -> RunTask:
    from dataclasses import replace

    threads = str(spec.slurm.cpus_per_job if gpus <= 1 else max(1, spec.slurm.cpus_per_job // gpus))
    return replace(task, nproc=max(1, gpus), env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})


def _id_range(ids: list[str]) -> str:
    return ids[0] if len(ids) == 1 else f"{ids[0]} .. {ids[-1]}"


def wait_for(spec: SweepSpec, say: Callable[[str], None], poll_s: float = 2.0,
             timeout_s: float | None = None) -> list[RunState]:
    """Poll until no run of the sweep is queued or running (``sweep --wait``)."""
    ledger = Ledger(spec.folder())
    resolved = resolve_runs(spec)
    start, last = time.monotonic(), ""
    while True:
        states = run_states(resolved, ledger)
        from udabench.sweep.status import counts

        line = ", ".join(f"{n} {s}" for s, n in counts(states).items() if n)
        if line != last:
            say(f"{time.strftime('%H:%M:%S')} {line}")
            last = line
        if not any(s.state in (QUEUED, RUNNING) for s in states):
            return states
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise UserError(f"--wait: runs still queued or running after {timeout_s:.0f} s; "
                            f"`udabench sweep status {spec.path}` follows them")
        time.sleep(poll_s)
