"""The MiniCity outcome table: every reference method on both MiniCity benchmarks, several seeds.

Run: python bench/minicity_table.py [--seeds 0-2] [--out runs-minicity]
Each run is an ordinary `udabench run` (on 2 CPU cores about 2.5 minutes for source-only and the
oracle, 4 for clst and self-training, 7 for adversarial: about 1.5 hours for 3 seeds); the table
is `udabench leaderboard --format markdown` over the runs it made. README shows its last output.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

METHODS = ("source-only", "adversarial", "self-training", "clst", "oracle")
BENCHMARKS = ("minicity-gta2cs", "minicity-synthia2cs")


def udabench(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "udabench", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--out", type=Path, default=Path("runs-minicity"))
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    sets = ["--set", f"paths.output_dir={args.out}"]  # not valid TOML, so read as a plain string
    for bench in BENCHMARKS:
        for method in args.methods:
            udabench("run", method, "--benchmark", bench, "--seeds", args.seeds, *sets)
    for bench in BENCHMARKS:
        udabench("leaderboard", "--benchmark", bench, "--format", "markdown", "--output-dir", str(args.out))


if __name__ == "__main__":
    main()
