"""Wall time of each default MiniCity run, one at a time, against MiniCity's 5-minute budget.

Run:  python bench/minicity_run_times.py [--benchmark minicity-gta2cs] [--seed 7] [--out DIR]
      [--only source-only,mic]

The rows are the runs of bench/minicity_table.toml (the table's sweep: its methods, setting grid
and row names such as adaptsegnet / advent / mic) on one benchmark and one seed. Each row is one
ordinary `udabench run` with the table's settings and default threads, started as its own process
and timed from start to exit, alone on the machine. MiniCity is generated once before the first
timed run (its time is printed apart: a one-time cost). CBST
(`self-training`) starts from the finished source-only run of its seed; the script times it in a
fresh output folder, so its row includes making that source run first, as a user's first CBST run
does. Prints one line per run and a table; exits 1 when a run fails.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from udabench.sweep.spec import load_spec

BUDGET_S = 300.0
TABLE = Path(__file__).with_name("minicity_table.toml")


def table_rows(benchmark: str) -> dict[str, tuple[str, list[str]]]:
    """Row name -> (method, --set values) of the table's sweep on ``benchmark`` (seed 0's runs)."""
    spec = load_spec(TABLE)
    if benchmark not in spec.sweep.benchmarks:
        raise SystemExit(f"error: {TABLE.name} has no benchmark {benchmark!r}; "
                         f"expected one of {', '.join(spec.sweep.benchmarks)}")
    return {run.name or run.method: (run.method, run.set_args()) for run in spec.runs()
            if run.benchmark == benchmark and run.seed == spec.seeds[0]}


def command(method: str, sets: list[str], benchmark: str, seed: int, out: Path,
            iters: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "udabench", "run", method, "--benchmark", benchmark,
           "--seed", str(seed), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    if iters is not None:
        cmd += ["--iters", str(iters)]
    return cmd


def timed(cmd: list[str], log: Path) -> tuple[float, int]:
    start = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - start, rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="minicity-gta2cs")
    ap.add_argument("--seed", type=int, default=7, help="a seed no table uses (default 7)")
    ap.add_argument("--out", type=Path, default=None, help="scratch output folder (default: a temp dir)")
    ap.add_argument("--only", default="", help="comma-separated row names (default: every row)")
    args = ap.parse_args()
    rows_of_table = table_rows(args.benchmark)
    names = [n for n in args.only.split(",") if n] or list(rows_of_table)
    unknown = [n for n in names if n not in rows_of_table]
    if unknown:
        print(f"error: unknown row(s) {', '.join(unknown)}; expected some of {', '.join(rows_of_table)}")
        return 2
    root = args.out or Path(tempfile.mkdtemp(prefix="minicity-times-"))
    root.mkdir(parents=True, exist_ok=True)

    # MiniCity generation (first use only) happens in a 1-iteration source-only run, timed apart.
    gen_s, rc = timed(command("source-only", [], args.benchmark, args.seed, root / "warmup", iters=1),
                      root / "warmup.log")
    print(f"generation + 1-iteration run: {gen_s:.0f} s (rc {rc})", flush=True)
    if rc:
        return 1
    rows = []
    for name in names:
        method, sets = rows_of_table[name]
        # A fresh folder per row: CBST then makes its source run first, as on a first use.
        out = root / name
        wall, rc = timed(command(method, sets, args.benchmark, args.seed, out), root / f"{name}.log")
        verdict = "FAILED" if rc else ("ok" if wall <= BUDGET_S else "over 5 min")
        print(f"{name}: {wall:.0f} s ({wall / 60:.1f} min) {verdict}", flush=True)
        rows.append((name, wall, verdict))
    print(f"\n{args.benchmark}, seed {args.seed}, one run at a time, default threads; logs in {root}")
    print("| run | wall | within 5 min |\n|---|---:|---|")
    for name, wall, verdict in rows:
        print(f"| {name} | {wall:.0f} s | {verdict} |")
    return 1 if any(v == "FAILED" for _, _, v in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
