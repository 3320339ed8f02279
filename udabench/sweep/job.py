"""One attempt of one sweep run: an ordinary ``udabench run`` subprocess, watched and recorded.

Both launchers use this: the local launcher runs several at once from the sweep process, a
Slurm job runs one on a node. The command is an argument list (never a shell string): ``python
-m udabench run METHOD -b BENCH --seed S --set ... --out OUT`` for a new run, ``udabench run
--resume DIR`` to continue one, under ``python -m torch.distributed.run`` when a run has several
GPUs. Its output goes to the run's log in the sweep folder; what became of it goes to the ledger.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from udabench.sweep.ledger import (ATTEMPT_HEADER, DONE, FAILED, INTERRUPTED, RUNNING, Ledger,
                                   error_line, now)

# Exit statuses of `udabench run` that mean "stopped on purpose, checkpoint written, resumable".
STOPPED = {130: "interrupted (SIGINT)", 143: "stopped by SIGTERM/SIGUSR1"}


@dataclass
class RunTask:
    """Everything a job needs to run one attempt (plain data: it travels to cluster nodes)."""

    run_id: str
    label: str
    args: list[str]  # `udabench` arguments of a new run: ["run", METHOD, "-b", ...]
    method: str
    benchmark: str
    seed: int
    out: str  # the output folder (absolute)
    hash6: str | None  # the config hash's first 6 characters: how its run directory is named
    cwd: str
    ledger: str  # the sweep folder
    env: dict[str, str] = field(default_factory=dict)
    nproc: int = 1  # processes (GPUs) of the run: >1 = torchrun
    resume_dir: str | None = None
    attempt: int = 1

    def command(self, python: str | None = None) -> list[str]:
        python = python or sys.executable
        args = ["run", "--resume", self.resume_dir] if self.resume_dir else list(self.args)
        if self.nproc > 1:
            return [python, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.nproc}", "-m", "udabench", *args]
        return [python, "-m", "udabench", *args]

    def resuming(self, run_dir: str | Path) -> "RunTask":
        return replace(self, resume_dir=str(run_dir))


def find_run_dir(task: RunTask, since: float = 0.0) -> Path | None:
    """The run directory this task's run made: named ``<stamp>-s<seed>-<hash6>``, under
    ``out/<benchmark>/<method>/``, its config.json written since ``since`` (newest first)."""
    if task.resume_dir:
        return Path(task.resume_dir)
    base = Path(task.out) / task.benchmark / task.method
    pattern = f"*-s{task.seed}-{task.hash6}*" if task.hash6 else f"*-s{task.seed}-*"
    found = []
    for d in base.glob(pattern):
        try:
            mtime = (d / "config.json").stat().st_mtime
        except OSError:
            continue
        if mtime >= since - 2:  # coarse file-system clocks
            found.append((mtime, d))
    return max(found)[1] if found else None


def resumable(run_dir: str | Path | None) -> bool:
    """A run directory that `udabench run --resume` can continue: settings saved, no result yet."""
    if not run_dir:
        return False
    d = Path(run_dir)
    return (d / "config.json").is_file() and not (d / "result.json").exists()


def finished(run_dir: str | Path | None) -> bool:
    return bool(run_dir) and (Path(run_dir) / "result.json").is_file()


def index_finished(out: str | Path, run_dir: str | Path) -> None:
    """Make sure the run store lists a finished run (a run killed between writing result.json and
    indexing itself would otherwise wait for a reindex)."""
    from udabench.errors import UserError
    from udabench.results.store import index_run, store_path

    try:
        index_run(store_path(out), run_dir)
    except (UserError, OSError):  # only a safety net: the run normally indexed itself
        pass


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")  # log lines reach the log as they are printed
    return env


class Attempt:
    """A started ``udabench run`` for a task, and the ledger records around it."""

    def __init__(self, task: RunTask, new_session: bool = False, block: tuple[int, ...] = (),
                 job_id: str | None = None):
        self.task, self.ledger = task, Ledger(task.ledger)
        self.started = time.time()
        self.job_id = job_id
        self.log = self.ledger.log_path(task.run_id)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = task.command()
        with open(self.log, "ab") as fh:
            fh.write(f"\n{ATTEMPT_HEADER} {task.run_id} attempt {task.attempt} ({task.label}) on "
                     f"{socket.gethostname()} at {now()}: {shlex.join(command)}\n".encode())
        out = open(self.log, "ab")
        # Signals in ``block`` reach the child blocked (a mask survives exec): Slurm's early
        # warning signal goes to every process of the job, but only the job should act on it.
        if block:
            signal.pthread_sigmask(signal.SIG_BLOCK, block)
        try:
            self.proc = subprocess.Popen(command, cwd=task.cwd, env=child_environment(task.env),
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=new_session)
        finally:
            if block:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, block)
            out.close()
        self._record(RUNNING, pid=self.proc.pid, pgid=os.getpgid(self.proc.pid),
                     started=now(), started_ts=self.started, run_dir=task.resume_dir,
                     returncode=None, error=None)

    def _record(self, state: str, **fields: Any) -> dict[str, Any]:
        extra = {"job_id": self.job_id} if self.job_id else {}
        return self.ledger.record_job(self.task.run_id, state, attempt=self.task.attempt,
                                      label=self.task.label, **extra, **fields)

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None, every: float = 0.2) -> int | None:
        """Wait by polling, so a signal handler may wait for the same process meanwhile."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.proc.poll() is None:
            if end is not None and time.monotonic() >= end:
                return None
            time.sleep(every)
        return self.proc.returncode

    def signal(self, signum: int, group: bool = False) -> None:
        if self.proc.poll() is not None:
            return
        try:
            if group:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def run_dir(self) -> Path | None:
        return find_run_dir(self.task, self.started)

    def note_run_dir(self) -> Path | None:
        """Record the run directory as soon as it exists (a later attempt resumes it)."""
        found = self.run_dir()
        if found is not None:
            self._record(RUNNING, run_dir=str(found))
        return found

    def finish(self, returncode: int, why: str | None = None) -> dict[str, Any]:
        """Record how the attempt ended: done, interrupted (resumable) or failed."""
        run_dir = self.run_dir()
        where = str(run_dir) if run_dir else None
        if finished(run_dir):  # even if a signal came after result.json was written
            index_finished(self.task.out, run_dir)
            return self._record(DONE, run_dir=where, returncode=returncode, error=None,
                                ended=now(), ended_ts=time.time())
        error = why or error_line(self.log, returncode)
        if returncode == 0:
            error = "exited without a result.json (see the log)"
        # Stopped on purpose or killed: continued by the next launch (resumed when it got as
        # far as a run directory, else started again); anything else failed.
        stopped = returncode in STOPPED or returncode < 0 or why is not None
        state = INTERRUPTED if stopped else FAILED
        return self._record(state, run_dir=where, returncode=returncode, error=error,
                            ended=now(), ended_ts=time.time())
