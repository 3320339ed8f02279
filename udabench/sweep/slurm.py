"""The Slurm launcher, through submitit: one job array per launch, one ``udabench run`` per task.

Time limits and preemption: submitit asks Slurm for its warning signal (USR2 unless
SUBMITIT_PREEMPT_SIGNAL says otherwise) ``signal_delay_s`` before the time limit. The job's
``checkpoint()`` then sends SIGTERM to its ``udabench run``, which writes a checkpoint and exits
(status 143); submitit requeues the job, which continues with ``udabench run --resume DIR``.
The run itself never sees the warning signal (it starts with it blocked): only the job decides.
A job cancelled (``scancel``: SIGTERM to every process) or killed at the limit stops the same
way, and the next ``udabench sweep`` resumes it. Several GPUs per run: the job runs
``python -m torch.distributed.run --standalone --nproc_per_node=G -m udabench run ...``.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from udabench.errors import UserError
from udabench.sweep.job import Attempt, RunTask, finished, index_finished, resumable
from udabench.sweep.ledger import DONE, REQUEUED, Ledger, now
from udabench.sweep.spec import SlurmSection


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("the Slurm launcher needs submitit: pip install 'udabench[cluster]' "
                        "(or pip install submitit)") from None
    return submitit


def _warning_signal() -> int:
    """The signal submitit asks Slurm to send before the time limit."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, "SIG" + name, signal.SIGUSR2)


class SweepJob:
    """What a Slurm job runs (submitit pickles it with its task). ``checkpoint`` is submitit's
    hook: called on the warning signal, it stops the run with a checkpoint and returns the same
    job continuing that run directory, which submitit requeues."""

    def __init__(self, stop_timeout_s: float, poll_s: float = 1.0):
        self.stop_timeout_s = stop_timeout_s
        self.poll_s = poll_s
        self._attempt: Attempt | None = None

    def __call__(self, task: RunTask) -> dict[str, Any]:
        ledger = Ledger(task.ledger)
        job_id = _job_id()
        earlier = ledger.job(task.run_id) or {}
        if earlier.get("attempt") == task.attempt:
            if finished(earlier.get("run_dir")):  # finished just as the warning signal came
                index_finished(task.out, earlier["run_dir"])
                return ledger.record_job(task.run_id, DONE, attempt=task.attempt, job_id=job_id)
            if task.resume_dir is None and resumable(earlier.get("run_dir")):
                # requeued by Slurm itself (preemption, `scontrol requeue`): continue that run
                task = task.resuming(earlier["run_dir"])
        attempt = self._attempt = Attempt(task, block=(_warning_signal(),), job_id=job_id)
        print(f"{now()} udabench sweep: {task.label} (pid {attempt.proc.pid}); log {attempt.log}",
              flush=True)
        run_dir = None
        while attempt.poll() is None:
            if run_dir is None:
                run_dir = attempt.note_run_dir()
            time.sleep(self.poll_s)
        record = attempt.finish(attempt.proc.returncode)
        print(f"{now()} udabench sweep: {record['state']} {task.label}: "
              f"{record.get('error') or record.get('run_dir')}", flush=True)
        if record["state"] != DONE:
            raise RuntimeError(f"{task.label}: {record['state']}: {record.get('error')}")
        return record

    def checkpoint(self, task: RunTask) -> Any:
        """Stop the run with a checkpoint; the requeued job resumes it."""
        submitit = _submitit()
        attempt = self._attempt
        again = SweepJob(self.stop_timeout_s, self.poll_s)  # picklable: no process in it
        if attempt is None:  # the warning came before the run started: start it again
            return submitit.helpers.DelayedSubmission(again, task)
        attempt.signal(signal.SIGTERM)
        code = attempt.wait(timeout=self.stop_timeout_s)
        run_dir = attempt.run_dir()
        if code is not None and finished(run_dir):
            # It finished meanwhile: record it and end the job here, without a requeue.
            record = attempt.finish(code)
            print(f"{now()} udabench sweep: {record['state']} {task.label}: {run_dir}", flush=True)
            sys.exit(0)
        fields = {"run_dir": str(run_dir) if run_dir else None, "returncode": code,
                  "error": "time limit or preemption: checkpoint written, job requeued"
                  if code == 143 else f"time limit or preemption: run stopped ({code}), job requeued"}
        attempt._record(REQUEUED, **fields)
        following = task.resuming(run_dir) if resumable(run_dir) else task
        return submitit.helpers.DelayedSubmission(again, following)


def check_slurm() -> None:
    import shutil

    missing = [c for c in ("sbatch", "srun", "squeue", "scancel") if shutil.which(c) is None]
    if missing:
        raise UserError(f"no Slurm here ({', '.join(missing)} not found); run the sweep on a "
                        "Slurm login node, or use --launcher local")


def _job_id() -> str | None:
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID")


def submit(tasks: list[RunTask], settings: SlurmSection, ledger: Ledger, jobs: int | None,
           name: str, launch_fields: Callable[[RunTask], dict[str, Any]]) -> list[str]:
    """Submit the tasks as one job array; record each task's job id; return the job ids."""
    submitit = _submitit()
    check_slurm()
    executor = submitit.SlurmExecutor(folder=ledger.slurm_folder / "%j",
                                      max_num_timeout=settings.max_requeues)
    executor.update_parameters(**sbatch_parameters(settings, jobs, name))
    stop_timeout = settings.stop_timeout_s or max(10, settings.signal_delay_s - 10)
    job = SweepJob(stop_timeout)
    # the ledger knows the attempt before the job can start (the job reads it)
    numbered = []
    before = {task.run_id: ledger.launch(task.run_id) for task in tasks}
    for task in tasks:
        record = ledger.record_launch(task.run_id, **launch_fields(task), launcher="slurm",
                                      job_id=None)
        numbered.append(_with_attempt(task, record["attempt"]))
    try:
        submitted = executor.map_array(job, numbered)
    except Exception as exc:  # sbatch refused (bad partition/account, ...): one line
        for run_id, record in before.items():  # nothing was submitted: nothing was launched
            ledger.restore_launch(run_id, record)
        detail = str(exc).strip().splitlines()
        raise UserError(f"sbatch refused the job array: {detail[-1] if detail else exc}") from None
    ids = []
    when = time.time()
    for task, sj in zip(numbered, submitted):
        ledger.update_launch(task.run_id, job_id=sj.job_id, submitted_ts=when)
        ids.append(sj.job_id)
    return ids


def _with_attempt(task: RunTask, attempt: int) -> RunTask:
    from dataclasses import replace

    return replace(task, attempt=attempt)


def sbatch_parameters(settings: SlurmSection, jobs: int | None, name: str) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters from the [slurm] table."""
    params: dict[str, Any] = {
        "time": settings.minutes(),
        "cpus_per_task": settings.cpus_per_job,
        "signal_delay_s": settings.signal_delay_s,
        "job_name": settings.job_name or f"udabench-{name}",
        "ntasks_per_node": 1,
        "stderr_to_stdout": True,
    }
    parallel = settings.array_parallelism or jobs
    if parallel:
        params["array_parallelism"] = parallel
    if settings.gpus_per_job:
        params["gpus_per_node"] = settings.gpus_per_job
    if settings.mem_gb:
        params["mem"] = f"{int(settings.mem_gb)}GB" if settings.mem_gb == int(settings.mem_gb) \
            else f"{int(settings.mem_gb * 1024)}MB"
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if getattr(settings, key):
            params[key] = getattr(settings, key)
    if settings.setup:
        params["setup"] = list(settings.setup)
    if settings.sbatch:
        params["additional_parameters"] = dict(settings.sbatch)
    return params


def cancel(job_ids: list[str], folder: Path) -> list[str]:
    """scancel through submitit (SIGTERM: each run writes a checkpoint before it ends)."""
    submitit = _submitit()
    done = []
    for job_id in job_ids:
        submitit.SlurmJob(folder=folder / "%j", job_id=job_id).cancel(check=False)
        done.append(job_id)
    return done
