"""Results: the run store (SQLite index of finished runs, checked against the disk on every read),
aggregation over seeds, paired bootstrap comparisons, published reference numbers, tables and
charts. ``udabench.results.api`` is the entry point for notebooks (see docs/results.md)."""
from udabench.results.store import IndexSummary, index_run, reindex, store_path
from udabench.results.view import load_records, open_view

__all__ = ["IndexSummary", "index_run", "load_records", "open_view", "reindex", "store_path"]
