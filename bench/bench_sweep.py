"""What `udabench sweep` adds to each run: seconds from launch to the run's first training step,
locally and on a local one-node Slurm cluster, next to a plain `udabench run` started by hand.

Run: python bench/bench_sweep.py [--runs 3] [--jobs 1] [--no-slurm]
(the Slurm part needs root, slurm-wlm, munge and submitit; it is skipped with the reason otherwise)

For each run the first training step is the moment its metrics.jsonl appears (log_every = 1),
seen by polling every 10 ms. Printed per launcher (median over runs):
  run process -> step 1   the run's own start-up (python, torch, data, model): compare with
                          the plain run's; a difference is what the launcher costs the run
  slot free / job end -> next run   the launcher's latency between runs (local: its poll;
                          Slurm: scheduling, then submitit loading the job)
  sweep start             the sweep command before its first launch (reading the spec and
                          resolving every run's settings), paid once per sweep
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.faultkit import env, generate_data, write_toml  # noqa: E402


def first_steps(out: Path, want: int, timeout: float, proc: subprocess.Popen | None = None) -> dict[str, float]:
    """run directory -> the time its metrics.jsonl appeared, for ``want`` runs under ``out``."""
    seen: dict[str, float] = {}
    end = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < end:
        for m in out.glob("*/*/*/metrics.jsonl"):
            seen.setdefault(str(m.parent), time.time())
        if proc is not None and proc.poll() is not None and len(seen) < want:
            for m in out.glob("*/*/*/metrics.jsonl"):
                seen.setdefault(str(m.parent), time.time())
            break
        time.sleep(0.01)
    if len(seen) < want:
        raise SystemExit(f"only {len(seen)} of {want} runs reached a first step in {timeout:.0f} s")
    return seen


def plain(work: Path, runs: int) -> list[float]:
    """Process start -> first step of `udabench run` started by hand, one after the other."""
    out = []
    for seed in range(runs):
        base = work / f"plain{seed}"
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "udabench", "run", "source-only", "-b",
                                 "minicity-gta2cs", "--seed", str(seed), "--out", str(base)],
                                cwd=work, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = first_steps(base, 1, 300, proc)
        out.append(min(first.values()) - t0)
        proc.wait(timeout=300)
    return out


def spec(work: Path, name: str, runs: int, launcher: str) -> Path:
    path = work / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        [sweep]
        methods = ["source-only"]
        benchmarks = ["minicity-gta2cs"]
        seeds = "0-{runs - 1}"
        config = "udabench.toml"
        out = "{name}"
        launcher = "{launcher}"
        [slurm]
        time = 10
        cpus_per_job = 1
        mem_gb = 1
    """))
    return path


def ledger_times(work: Path, name: str) -> dict[str, dict]:
    """run directory -> its job record (started_ts: when the launcher started its process)."""
    out = {}
    for f in (work / f"{name}.sweep" / "ledger").glob("*.job.json"):
        record = json.loads(f.read_text())
        if record.get("run_dir"):
            out[record["run_dir"]] = record
    return out


def local(work: Path, runs: int, jobs: int) -> dict[str, list[float]]:
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "udabench", "sweep", str(spec(work, "local", runs, "local")),
                             "--jobs", str(jobs)], cwd=work, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    first = first_steps(work / "local", runs, 600, proc)
    proc.wait(timeout=600)
    jobs_seen = ledger_times(work, "local")
    child = [first[d] - jobs_seen[d]["started_ts"] for d in first]
    starts = sorted(j["started_ts"] for j in jobs_seen.values())
    ends = sorted(j["ended_ts"] for j in jobs_seen.values())
    # a slot frees when a run ends; the next run starts at the launcher's next poll
    gaps = [s - e for s, e in zip(starts[jobs:], ends[:len(starts) - jobs])]
    return {"child": child, "sweep start": [starts[0] - t0], "gap": gaps}


def _stamp(text: str, what: str) -> float | None:
    m = re.search(r"submitit INFO \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\) - " + what, text)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def slurm(work: Path, runs: int) -> dict[str, list[float]] | str:
    """One array task at a time (--jobs 1): each job starts when the previous one ended."""
    from tests.slurm_cluster import ClusterUnavailable, start_cluster

    try:
        cluster = start_cluster(Path(tempfile.mkdtemp(prefix="bench-slurm-")))
    except ClusterUnavailable as exc:
        return str(exc)
    try:
        e = {**env(), "SLURM_CONF": str(cluster.conf)}
        t0 = time.time()
        sub = subprocess.run([sys.executable, "-m", "udabench", "sweep",
                              str(spec(work, "slurm", runs, "slurm")), "--jobs", "1"],
                             cwd=work, env=e, capture_output=True, text=True, timeout=300)
        if sub.returncode != 0:
            return f"sweep failed: {sub.stdout[-500:]} {sub.stderr[-500:]}"
        first = first_steps(work / "slurm", runs, 900)
        end = time.monotonic() + 600
        while cluster.queue() and time.monotonic() < end:
            time.sleep(0.5)
        jobs_seen = ledger_times(work, "slurm")
        launches = [json.loads(f.read_text()) for f in (work / "slurm.sweep" / "ledger").glob("*.launch.json")]
        submitted = launches[0]["submitted_ts"]
        child = [first[d] - jobs_seen[d]["started_ts"] for d in first]
        spans = []
        for log in (work / "slurm.sweep" / "logs" / "slurm").glob("*/*_log.out"):
            text = log.read_text()
            spans.append((log.parent.name, _stamp(text, "Starting"), _stamp(text, "Exiting after")))
        spans.sort(key=lambda x: x[1])
        by_job = {j["job_id"]: j for j in jobs_seen.values()}
        return {"child": child, "sweep start": [submitted - t0], "first job": [spans[0][1] - submitted],
                "next job": [b[1] - a[2] for a, b in zip(spans, spans[1:])],
                "job -> child": [by_job[k]["started_ts"] - start for k, start, _ in spans]}
    finally:
        cluster.stop()


def show(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<34} -"
    return (f"  {name:<34} median {statistics.median(values):6.2f} s  (min {min(values):.2f}, "
            f"max {max(values):.2f}, n={len(values)})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="local runs at once (1: no contention)")
    ap.add_argument("--no-slurm", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    data = work / "data"
    generate_data(data)
    write_toml(work, data, iters=4, checkpoint_every=4)
    print(f"{os.cpu_count()} cpu(s), load {os.getloadavg()[0]:.1f}; tiny MiniCity source-only runs, "
          f"1 thread each; {args.runs} runs per launcher")
    base = plain(work, args.runs)
    print("plain `udabench run` (one by one):")
    print(show("process start -> step 1", base))
    loc = local(work, args.runs, args.jobs)
    print(f"local sweep (--jobs {args.jobs}):")
    print(show("sweep start (once)", loc["sweep start"]))
    print(show("slot free -> next run's process", loc["gap"]))
    print(show("run process -> step 1", loc["child"]))
    if args.no_slurm:
        return
    sl = slurm(work, args.runs)
    if isinstance(sl, str):
        print(f"slurm: skipped ({sl})")
        return
    print("local Slurm (one node, 2 CPUs; cpus_per_job=1, --jobs 1):")
    print(show("sweep start until sbatch returned", sl["sweep start"]))
    print(show("sbatch returned -> first job starts", sl["first job"]))
    print(show("a job ends -> the next one starts", sl["next job"]))
    print(show("job start -> run process", sl["job -> child"]))
    print(show("run process -> step 1", sl["child"]))


if __name__ == "__main__":
    main()
