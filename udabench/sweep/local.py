"""The local launcher: N runs at once on this machine, one GPU (or a group of them) each, or a
fixed CPU thread budget each so that the runs together never ask for more cores than there are.

Each run is an ordinary ``udabench run`` in its own process group. Ctrl-C (or SIGTERM, e.g. from
``udabench sweep cancel``) is passed to every running run, which writes a checkpoint and exits;
the sweep then stops launching and exits too; running the sweep again resumes them.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from udabench.errors import UserError
from udabench.sweep.job import Attempt, RunTask
from udabench.sweep.ledger import DONE, INTERRUPTED, Ledger
from udabench.sweep.spec import LocalSection


@dataclass
class Slot:
    """Where one run goes: its environment (GPUs, threads) and its number of processes."""

    env: dict[str, str]
    nproc: int
    describe: str


class SweepStopped(UserError):
    """The sweep was stopped by a signal; its running runs wrote checkpoints."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def _threads(n: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}


def local_slots(settings: LocalSection, jobs: int | None, gpus: list[str], cores: int) -> list[Slot]:
    """The slots of ``jobs`` concurrent runs ([local] jobs, else one per GPU group or core)."""
    jobs = jobs or settings.jobs
    if gpus and settings.gpus_per_job > 0:
        g = settings.gpus_per_job
        groups = [gpus[i:i + g] for i in range(0, len(gpus) - g + 1, g)]
        if not groups:
            raise UserError(f"[local] gpus_per_job = {g} but only {len(gpus)} GPU(s) are visible; "
                            "lower gpus_per_job")
        jobs = jobs or len(groups)
        if jobs > len(groups):
            raise UserError(f"--jobs {jobs} needs {jobs * g} GPUs ({g} per run) but {len(gpus)} are "
                            f"visible; use --jobs {len(groups)} or fewer")
        threads = max(1, cores // jobs)
        return [Slot({"CUDA_VISIBLE_DEVICES": ",".join(grp), **_threads(threads)}, g,
                     f"GPU {','.join(grp)}") for grp in groups[:jobs]]
    threads = settings.threads_per_job
    jobs = jobs or max(1, cores // threads)
    if jobs * threads > cores:
        raise UserError(f"{jobs} runs x {threads} thread(s) (--jobs, [local] threads_per_job) "
                        f"exceed the {cores} CPU core(s) here; lower --jobs or threads_per_job")
    env = _threads(threads)
    if gpus:  # GPUs present but gpus_per_job = 0: keep them out of sight
        env["CUDA_VISIBLE_DEVICES"] = ""
    return [Slot(dict(env), 1, f"CPU, {threads} thread{'s' * (threads > 1)}") for _ in range(jobs)]


def run_local(tasks: list[RunTask], slots: list[Slot], ledger: Ledger,
              launch_fields: Callable[[RunTask], dict[str, Any]],
              say: Callable[[str], None] = print, poll_s: float = 0.2) -> list[dict[str, Any]]:
    """Run the tasks, ``len(slots)`` at a time; the job records of every run that ended."""
    queue = list(tasks)
    free = list(range(len(slots)))
    running: dict[int, Attempt] = {}
    noted: set[int] = set()
    ended: list[dict[str, Any]] = []
    stop: list[int] = []
    total = len(tasks)

    def on_signal(signum, frame) -> None:
        stop.append(signum)
        for attempt in list(running.values()):
            attempt.signal(signum, group=True)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    ledger.record_launcher(pid=os.getpid(), launcher="local")
    try:
        while (queue and not stop) or running:
            while queue and free and not stop:
                task, slot = queue.pop(0), free.pop(0)
                record = ledger.record_launch(task.run_id, **launch_fields(task))
                task = replace(task, env={**task.env, **slots[slot].env}, nproc=slots[slot].nproc,
                               attempt=record["attempt"])
                attempt = Attempt(task, new_session=True)
                running[slot] = attempt
                how = f"resuming {task.resume_dir}" if task.resume_dir else "new run"
                say(f"[{total - len(queue)}/{total}] started {task.label} ({slots[slot].describe}; "
                    f"{how}); log: {attempt.log}")
            time.sleep(poll_s)
            for slot, attempt in list(running.items()):
                if id(attempt) not in noted and attempt.note_run_dir() is not None:
                    noted.add(id(attempt))
                code = attempt.poll()
                if code is None:
                    continue
                record = attempt.finish(code)
                ended.append(record)
                del running[slot]
                free.append(slot)
                say(describe_end(attempt.task.label, record))
    except BaseException:
        for attempt in running.values():  # never leave runs behind unwatched
            attempt.signal(signal.SIGTERM, group=True)
        for attempt in running.values():
            code = attempt.wait(timeout=60)
            attempt.finish(-signal.SIGKILL if code is None else code, "the sweep process failed")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ledger.clear_launcher(os.getpid())
    if stop:
        stopped = sum(1 for r in ended if r["state"] == INTERRUPTED)
        name = signal.Signals(stop[0]).name
        raise SweepStopped(f"sweep stopped by {name}: {stopped} run(s) interrupted (checkpoints "
                           f"written), {len(queue)} not started; run the same `udabench sweep` "
                           "again to continue", stop[0])
    return ended


def describe_end(label: str, record: dict[str, Any]) -> str:
    state = record["state"]
    if state == DONE:
        return f"done {label}: {record.get('run_dir')}"
    return f"{state} {label}: {record.get('error')}" + (
        f" (run directory {record['run_dir']})" if record.get("run_dir") else "")
