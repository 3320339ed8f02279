"""The results API in a notebook-style script: load runs, aggregate, compare, plot.

Run: python docs/examples/results_api.py [OUTPUT_DIR] [FIGURE.pdf]
(OUTPUT_DIR defaults to ./runs; a test runs this script on hand-made run directories.)
"""
import sys
from pathlib import Path

from udabench.results import api, tables

output_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs")
figure = Path(sys.argv[2] if len(sys.argv) > 2 else "methods.pdf")

# One row per finished run: keys, seed, mIoU per subset, per-class IoU, compute, protocol.
runs = api.load_runs(output_dir)
print(f"{len(runs)} finished runs of {runs['method'].nunique()} methods")
print(runs[["method", "config_hash", "seed", "mIoU19"]].sort_values(["method", "seed"]).to_string(index=False))

# Mean and std over seeds per configuration: the numbers `udabench leaderboard` shows.
table = api.leaderboard(output_dir)
print(table[["method", "config_hash", "n", "seeds", "mIoU19", "mIoU19 std"]].to_string(index=False))

# The same tables, rendered for a paper (booktabs; \usepackage{booktabs}).
boards, warnings = api.boards(output_dir)
print(tables.to_latex(boards, warnings, per_class=True))

# Is the best method better than the second, beyond image and seed noise?
best, second = table.sort_values("mIoU19", ascending=False)["config_hash"].head(2)
result = api.compare(output_dir, best, second, resamples=500)
print(result.verdict())
print(f"95% CI over images: [{result.bootstrap['19'].low:.1f}, {result.bootstrap['19'].high:.1f}]")

# Per-class bars of every method, error bars over seeds, one paper column wide.
fig = api.plot(output_dir, list(table["config_hash"]), size="column", out=figure, overwrite=True)
print(f"{len(fig.axes)} panel(s) written to {figure}")
