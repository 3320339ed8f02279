"""The sweep folder: what was launched, what each job did, and each run's log.

::

    <sweep folder>/
      ledger/<run id>.launch.json   written by the launcher: attempt, launcher, job id, config hash
      ledger/<run id>.job.json      written by the job itself: running/done/failed/interrupted,
                                    the run directory, the exit status, the error line
      ledger/launcher.json          the local launcher process (for `sweep cancel`)
      logs/<run id>.log             the run's output (every attempt appended, with a header line)
      logs/slurm/                   submitit's own job files and logs

One writer per file (the launcher, or the one job running that run), every write atomic
(temporary file + rename), so jobs on cluster nodes and the launcher never lock each other and a
reader never sees half a record. JSON files, not SQLite: cluster file systems (NFS, Lustre) do not
lock SQLite files reliably.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from udabench.errors import UserError
from udabench.fileio import atomic_write_bytes

# What a job can report about its run.
RUNNING, DONE, FAILED, INTERRUPTED, REQUEUED = "running", "done", "failed", "interrupted", "requeued"
ATTEMPT_HEADER = "=== udabench sweep"  # starts the lines of one attempt in a run's log


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class Ledger:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    # -- paths -------------------------------------------------------------------------------
    def _file(self, run_id: str, kind: str) -> Path:
        return self.folder / "ledger" / f"{run_id}.{kind}.json"

    def log_path(self, run_id: str) -> Path:
        return self.folder / "logs" / f"{run_id}.log"

    @property
    def slurm_folder(self) -> Path:
        return self.folder / "logs" / "slurm"

    @property
    def launcher_file(self) -> Path:
        return self.folder / "ledger" / "launcher.json"

    def create(self) -> "Ledger":
        try:
            for sub in ("ledger", "logs"):
                (self.folder / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the sweep folder {self.folder} ({exc.strerror or exc}); "
                            "set [sweep] folder to a writable place") from None
        return self

    # -- records -----------------------------------------------------------------------------
    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable: treated as unknown, rewritten by the next write
            return None

    @staticmethod
    def _write(path: Path, record: dict[str, Any]) -> None:
        atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())

    def launch(self, run_id: str) -> dict[str, Any] | None:
        return self._read(self._file(run_id, "launch"))

    def job(self, run_id: str) -> dict[str, Any] | None:
        return self._read(self._file(run_id, "job"))

    def record_launch(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """A new attempt of a run (its number goes up by one each launch)."""
        previous = self.launch(run_id) or {}
        record = {"run_id": run_id, "attempt": int(previous.get("attempt", 0)) + 1,
                  "launched": now(), **fields}
        self._write(self._file(run_id, "launch"), record)
        return record

    def update_launch(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Add to the current attempt's launch record (a Slurm job id once sbatch gave it)."""
        record = {**(self.launch(run_id) or {"run_id": run_id, "attempt": 1}), **fields}
        self._write(self._file(run_id, "launch"), record)
        return record

    def record_job(self, run_id: str, state: str, **fields: Any) -> dict[str, Any]:
        """What the job running a run saw; fields it does not give are kept from its last record
        of the same attempt (the run directory found earlier, the host)."""
        previous = self.job(run_id) or {}
        keep = previous if previous.get("attempt") == fields.get("attempt") else {}
        record = {**keep, "run_id": run_id, "state": state, "updated": now(),
                  "host": socket.gethostname(), **fields}
        self._write(self._file(run_id, "job"), record)
        return record

    def lock(self) -> Any:
        """Held while one `udabench sweep` launches (and, locally, watches) this sweep's runs:
        two at once would both start the same pending runs."""
        import fcntl
        import os

        self.create()
        handle = open(self.folder / "ledger" / "launch.lock", "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"another `udabench sweep` is launching this sweep ({holder}); wait for "
                            f"it, or stop it with `udabench sweep cancel`") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        return handle

    def restore_launch(self, run_id: str, record: dict[str, Any] | None) -> None:
        """Put back a launch record as it was (a submission that did not happen)."""
        if record is None:
            self._file(run_id, "launch").unlink(missing_ok=True)
        else:
            self._write(self._file(run_id, "launch"), record)

    def record_launcher(self, **fields: Any) -> None:
        self._write(self.launcher_file, {"host": socket.gethostname(), "started": now(), **fields})

    def launcher(self) -> dict[str, Any] | None:
        return self._read(self.launcher_file)

    def clear_launcher(self, pid: int) -> None:
        record = self.launcher()
        if record and record.get("pid") == pid:
            self.launcher_file.unlink(missing_ok=True)


def error_line(log: Path, returncode: int | None, limit: int = 65536) -> str:
    """The one line that says why a run stopped: udabench's own ``error:`` line, else the last
    line of a traceback, else the exit status."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    # only this attempt's lines: an attempt starts with a header written by the job
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(ATTEMPT_HEADER):
            lines = lines[i + 1:]
            break
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback (most recent call last)"):
            # the exception line: the last one of the traceback that is not indented
            tail = [line for line in lines[i + 1:] if not line[:1].isspace()]
            return tail[-1] if tail else "a Python error (see the log)"
    if returncode is None:
        return "no exit status (the job was lost)"
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"
