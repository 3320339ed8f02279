"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd from the Debian
packages (slurm-wlm, munge), configured on this host in a private folder with free ports.

``start_cluster(folder)`` returns a running :class:`SlurmCluster` or raises
:class:`ClusterUnavailable` with the one-line reason (the fixture skips the tests with it).
``SlurmCluster.env`` is what a client (sbatch, squeue, submitit) needs: ``SLURM_CONF``. The
session fixture ``slurm_cluster`` (registered in tests/conftest.py) starts one for the tests that
use it and stops it (and every job it still runs) at the end.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "srun")


class ClusterUnavailable(Exception):
    """Why a local Slurm cluster cannot run here (one line)."""


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    node: str
    kill_wait: int
    pid_files: list[Path] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def queue(self) -> dict[str, str]:
        out = self.run("squeue", "--noheader", "--array", "--format=%i|%T").stdout
        return dict(line.strip().split("|", 1) for line in out.splitlines() if "|" in line)

    def log(self, name: str, lines: int = 40) -> str:
        path = self.root / "log" / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Cancel every job (waiting for its processes to end), then stop the daemons."""
        try:
            self.run("scancel", "--user", "root", timeout=10)
            end = time.monotonic() + self.kill_wait + 10
            while self.queue() and time.monotonic() < end:
                time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for pid_file in reversed(self.pid_files):
            _stop_pid(pid_file)


def _stop_pid(pid_file: Path, wait_s: float = 10) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterUnavailable("no MemTotal in /proc/meminfo")


def slurm_conf(root: Path, node: str, ports: list[int], cpus: int, memory_mb: int, kill_wait: int,
               first_job_id: int = 1) -> str:
    return f"""# a one-node test cluster (tests/slurm_cluster.py)
ClusterName=udabench-test
# job ids (and so the rendezvous ports derived from them) differ from one test session to the next
FirstJobId={first_job_id}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again this many seconds later (default 120)
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_min_interval=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# seconds between SIGTERM and SIGKILL at a time limit or scancel: the run's checkpoint time
KillWait={kill_wait}
OverTimeLimit=0
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(root: Path, cpus: int = 2, kill_wait: int = 30, timeout_s: float = 60) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under ``root``; wait until the node is idle."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("the local Slurm cluster needs root (slurmd runs jobs as their user)")
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        raise ClusterUnavailable(f"Slurm/munge not installed ({', '.join(missing)} missing): "
                                 "apt-get install -y slurm-wlm munge")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ClusterUnavailable("submitit is not installed: pip install submitit") from None
    root = Path(root)
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    node = socket.gethostname()
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, node, _free_ports(2), cpus, max(256, _memory_mb() - 1024), kill_wait,
                               first_job_id=random.randrange(1000, 1_000_000)))
    cluster = SlurmCluster(root, conf, node, kill_wait)

    def start(args: list[str], pid_file: Path, what: str) -> None:
        cluster.pid_files.append(pid_file)
        proc = subprocess.run(args, env=cluster.env, capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            cluster.stop()
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ClusterUnavailable(f"{what} did not start: {detail[-1] if detail else proc.returncode}")

    munge = root / "munge"
    start(["munged", "--force", f"--socket={munge}/munge.socket", f"--key-file={key}",
           f"--log-file={munge}/munged.log", f"--pid-file={munge}/munged.pid",
           f"--seed-file={munge}/munged.seed"], munge / "munged.pid", "munged")
    start([_sbin("slurmctld"), "-f", str(conf)], root / "slurmctld.pid", "slurmctld")
    start([_sbin("slurmd"), "-f", str(conf), "-N", node], root / "slurmd.pid", "slurmd")
    end = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < end:
        state = cluster.run("sinfo", "--noheader", "--format=%T", timeout=10).stdout.strip()
        if state == "idle":
            break
        time.sleep(0.5)
    else:
        cluster.stop()
        raise ClusterUnavailable(f"the Slurm node did not become idle in {timeout_s:.0f} s (state "
                                 f"{state or 'unknown'}): "
                                 f"{cluster.log('slurmd', 1) or cluster.log('slurmctld', 1)}")
    try:  # a job must really run here (not only the daemons start)
        probe = cluster.run("srun", "--ntasks=1", "--time=1", "true", timeout=60)
        failed = probe.returncode != 0 and (probe.stderr.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        failed = "it did not end within 60 s"
    if failed:
        cluster.stop()
        raise ClusterUnavailable(f"a test job did not run on the local Slurm cluster: {failed}")
    return cluster


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster, or the tests skip with the one-line reason it cannot run."""
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        pytest.skip(f"no local Slurm cluster: {exc}")
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no local Slurm cluster: {type(exc).__name__}: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
