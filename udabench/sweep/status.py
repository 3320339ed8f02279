"""Where each run of a sweep stands, from the disk, the ledger and the live processes or jobs.

States: ``pending`` (never launched, or launched for other settings), ``queued`` (a Slurm job
waiting), ``running``, ``done`` (a finished run with its config hash and seed exists),
``interrupted`` (stopped on purpose or killed: the next launch resumes it), ``failed`` (with the
one line that says why; relaunched only with --retry-failed).
"""
from __future__ import annotations

import datetime as _dt
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from udabench.sweep.job import RunTask, find_run_dir, resumable
from udabench.sweep.ledger import DONE, FAILED, INTERRUPTED, REQUEUED, RUNNING, Ledger, error_line
from udabench.sweep.resolve import Resolved, finished_runs

PENDING, QUEUED = "pending", "queued"
STATES = (PENDING, QUEUED, RUNNING, DONE, INTERRUPTED, FAILED)


@dataclass
class RunState:
    resolved: Resolved
    state: str
    run_dir: str | None = None
    error: str | None = None
    attempt: int = 0
    where: str = ""  # pid@host or Slurm job id

    @property
    def run(self):
        return self.resolved.run

    def resume_dir(self) -> str | None:
        """The run directory the next launch continues (None: start a new run)."""
        return self.run_dir if self.state in (INTERRUPTED, FAILED) and resumable(self.run_dir) else None

    def to_json(self) -> dict[str, Any]:
        run = self.run
        return {"id": run.id, "method": run.method, "benchmark": run.benchmark, "seed": run.seed,
                "name": run.name, "tags": list(run.tags), "settings": dict(run.settings),
                "config_hash": self.resolved.config_hash, "state": self.state,
                "run_dir": self.run_dir, "error": self.error, "attempt": self.attempt,
                "where": self.where}


def local_alive(record: dict[str, Any]) -> bool | None:
    """Whether a run's local process still runs (None: it ran on another host, unknown)."""
    if record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, TypeError, ValueError):
        return False
    return b"udabench" in cmdline  # not a recycled pid


def slurm_queue() -> dict[str, str] | None:
    """Job id -> state of the caller's Slurm jobs (array tasks one by one); None without Slurm."""
    try:
        out = subprocess.run(["squeue", "--me", "--noheader", "--array", "--format=%i|%T"],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    queue = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            queue[job] = state
    return queue


def _task_like(resolved: Resolved, job: dict[str, Any]) -> RunTask:
    run = resolved.run
    return RunTask(run.id, run.label(), [], run.method, run.benchmark, run.seed,
                   str(resolved.output_dir), (resolved.config_hash or "")[:6] or None, "", "")


def run_states(resolved: list[Resolved], ledger: Ledger,
               queue: Callable[[], dict[str, str] | None] = slurm_queue) -> list[RunState]:
    finished = finished_runs({r.output_dir for r in resolved})
    states = []
    squeue: dict[str, str] | None = None
    asked = False
    for res in resolved:
        run = res.run
        launch, job = ledger.launch(run.id), ledger.job(run.id)
        if res.config_hash is not None:
            hit = finished.get((run.benchmark, res.config_hash, run.seed))
            if hit:
                states.append(RunState(res, DONE, hit, attempt=(launch or {}).get("attempt", 0)))
                continue
        if job and job.get("state") == DONE and _finished_here(job.get("run_dir"), res.config_hash):
            states.append(RunState(res, DONE, job["run_dir"], attempt=job.get("attempt", 0)))
            continue
        if not launch or (res.config_hash and launch.get("config_hash") not in (None, res.config_hash)):
            states.append(RunState(res, PENDING))  # never launched, or for other settings
            continue
        attempt = int(launch.get("attempt", 0))
        slurm = launch.get("launcher") == "slurm"
        if slurm and not asked:
            squeue, asked = queue(), True
        job_id = str(launch.get("job_id") or "")
        where = job_id if slurm else ""
        if not job or job.get("attempt") != attempt:
            if slurm and squeue is not None and job_id in squeue:
                states.append(RunState(res, QUEUED, attempt=attempt, where=job_id))
            elif slurm and squeue is None:
                states.append(RunState(res, QUEUED, attempt=attempt, where=job_id,
                                       error="Slurm's queue cannot be read here (squeue failed)"))
            elif slurm:
                states.append(RunState(res, FAILED, attempt=attempt, where=job_id,
                                       error=_slurm_error(ledger, job_id)))
            else:
                states.append(RunState(res, PENDING, attempt=attempt))
            continue
        state, run_dir, error = job.get("state"), job.get("run_dir"), job.get("error")
        where = where or f"{job.get('pid')}@{job.get('host')}"
        if state in (RUNNING, REQUEUED):
            alive = (job_id in squeue if squeue is not None else None) if slurm else local_alive(job)
            if alive is False:
                state = INTERRUPTED
                error = error or "its process ended without saying how (killed, or the node was lost)"
            elif slurm and squeue is not None and squeue.get(job_id) == "PENDING":
                state = QUEUED
            else:
                state = RUNNING
        if state == DONE:  # reported done, but that result is gone or for other settings
            state, error = PENDING, None
        if run_dir is None and state in (INTERRUPTED, FAILED, RUNNING):
            found = find_run_dir(_task_like(res, job),
                                 float(job.get("started_ts") or _timestamp(job.get("started"))))
            run_dir = str(found) if found else None
        states.append(RunState(res, state, run_dir, error, attempt, where))
    return states


def _finished_here(run_dir: str | None, config_hash: str | None) -> bool:
    if not run_dir:
        return False
    import json

    try:
        record = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return False
    return config_hash is None or record.get("config_hash") == config_hash


def _timestamp(text: str | None) -> float:
    try:
        return _dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return 0.0


def _slurm_error(ledger: Ledger, job_id: str) -> str:
    """Why a Slurm job ended before its run started: the last line of submitit's log for it."""
    logs = sorted(ledger.slurm_folder.glob(f"{job_id}_*_log.*"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        line = error_line(log, None)
        if line and not line.startswith("no exit status"):
            return f"the Slurm job ended before the run started: {line} ({log})"
    return (f"Slurm job {job_id} ended before the run started and left no log "
            f"(see `scontrol show job {job_id}` while Slurm remembers it)")


def counts(states: list[RunState]) -> dict[str, int]:
    out = {s: 0 for s in STATES}
    for st in states:
        out[st.state] += 1
    return out


def busy_jobs(run_ids: list[str], ledger: Ledger,
              queue: Callable[[], dict[str, str] | None] = slurm_queue) -> tuple[list[str], list[int]]:
    """(Slurm job ids still queued or running, local process groups still running) of these
    runs, from the ledger alone."""
    slurm_ids, groups, squeue = [], [], None
    for run_id in run_ids:
        launch, job = ledger.launch(run_id) or {}, ledger.job(run_id) or {}
        if launch.get("launcher") == "slurm":
            job_id = str(launch.get("job_id") or "")
            if job_id:
                squeue = queue() if squeue is None else squeue
                if squeue is not None and job_id in squeue:
                    slurm_ids.append(job_id)
        elif job.get("state") == RUNNING and job.get("attempt") == launch.get("attempt") \
                and local_alive(job):
            groups.append(int(job.get("pgid") or job["pid"]))
    return slurm_ids, groups
